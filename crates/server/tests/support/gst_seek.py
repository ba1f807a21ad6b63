#!/usr/bin/python3
"""Plays an RTSP URL in a GStreamer playbin (fake sinks, in sync with the clock), then seeks
and reports positions, for the playback tests. Prints one line per step, `name value`:

  gst_seek.py URL seek SECONDS   -> `position_after_seek S` (as the seek completes) and
                                     `position_later S` (a second later)
  gst_seek.py URL rate RATE      -> `advanced S WALL` (position gained over WALL seconds
                                     after a seek at RATE from the current position)

Exits non-zero with a message on an error message from the pipeline or a timeout.
"""
import sys
import time

import gi

gi.require_version("Gst", "1.0")
from gi.repository import Gst  # noqa: E402

TIMEOUT_NS = 20 * Gst.SECOND


def fail(msg):
    print(f"error {msg}", flush=True)
    sys.exit(1)


def wait(bus, types):
    msg = bus.timed_pop_filtered(TIMEOUT_NS, types | Gst.MessageType.ERROR)
    if msg is None:
        fail("timeout")
    if msg.type == Gst.MessageType.ERROR:
        err, dbg = msg.parse_error()
        fail(f"{err.message} {dbg}")
    return msg


def position(p):
    ok, pos = p.query_position(Gst.Format.TIME)
    return pos / Gst.SECOND if ok else -1.0


def setup_source(_, src):
    # A short jitter buffer: after a flushing seek rtspsrc's position leaps by its latency
    # (2 s by default) in the first moments, whatever the server. And timestamps as sent
    # (buffer-mode none): the default "slave" mode maps RTP time onto arrival time, which
    # undoes Speed (media sent 4x faster, stamped as at 1x, is rescaled to 1x: ~1.3x seen).
    src.set_property("latency", 200)
    src.set_property("buffer-mode", 0)
    # Interleaved over the RTSP connection (UDP playback is ffprobe's test): once, under load,
    # a UDP session's pipeline stopped (no RTCP, no requests) after the rate seek.
    src.set_property("protocols", "tcp")


def main():
    url, mode, arg = sys.argv[1], sys.argv[2], float(sys.argv[3])
    Gst.init(None)
    p = Gst.ElementFactory.make("playbin")
    p.set_property("uri", url)
    p.set_property("video-sink", Gst.ElementFactory.make("fakesink"))
    p.set_property("audio-sink", Gst.ElementFactory.make("fakesink"))
    p.connect("source-setup", setup_source)
    bus = p.get_bus()
    p.set_state(Gst.State.PLAYING)
    wait(bus, Gst.MessageType.ASYNC_DONE)
    time.sleep(1.0)
    print(f"position_before {position(p):.3f}", flush=True)
    if mode == "seek":
        p.seek_simple(Gst.Format.TIME, Gst.SeekFlags.FLUSH | Gst.SeekFlags.KEY_UNIT, int(arg * Gst.SECOND))
        wait(bus, Gst.MessageType.ASYNC_DONE)
        print(f"position_after_seek {position(p):.3f}", flush=True)
        time.sleep(1.0)
        print(f"position_later {position(p):.3f}", flush=True)
    else:
        start = position(p)
        p.seek(arg, Gst.Format.TIME, Gst.SeekFlags.FLUSH, Gst.SeekType.SET, int(start * Gst.SECOND),
               Gst.SeekType.NONE, -1)
        wait(bus, Gst.MessageType.ASYNC_DONE)
        t0, pos0 = time.monotonic(), position(p)
        time.sleep(2.0)
        print(f"advanced {position(p) - pos0:.3f} {time.monotonic() - t0:.3f}", flush=True)
    p.set_state(Gst.State.NULL)


if __name__ == "__main__":
    main()
