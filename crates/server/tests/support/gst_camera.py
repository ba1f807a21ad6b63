#!/usr/bin/python3
"""A third-party IP camera for the pull tests: GStreamer's own RTSP server (GstRtspServer,
not our code) serving live H.264 (x264enc, zerolatency, a keyframe every 30 frames) and AAC
(avenc_aac) made from test sources.

  gst_camera.py --port P --mount /cam [--width W --height H] [--user U --password P [--digest]]
                [--tcp-only] [--no-audio]

--port 0 lets the kernel pick. Prints `ready PORT` once listening, then one line per client
event, for the tests to follow: `connected`, `setup`, `play`, `teardown`, `closed`.
--digest offers Digest (MD5) only; without it, credentials are checked as Basic.
--tcp-only refuses UDP SETUPs (461), as cameras configured for "TCP only" do.
--no-audio serves the video track alone.
Runs until killed.
"""
import argparse
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer  # noqa: E402


def say(line):
    print(line, flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--mount", default="/cam")
    ap.add_argument("--width", type=int, default=352)
    ap.add_argument("--height", type=int, default=288)
    ap.add_argument("--user")
    ap.add_argument("--password")
    ap.add_argument("--digest", action="store_true")
    ap.add_argument("--tcp-only", action="store_true")
    ap.add_argument("--no-audio", action="store_true")
    args = ap.parse_args()

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))

    factory = GstRtspServer.RTSPMediaFactory()
    audio = (
        ""
        if args.no_audio
        else "audiotestsrc is-live=true wave=sine ! audioconvert ! audioresample "
        "! audio/x-raw,rate=44100,channels=2 ! avenc_aac ! rtpmp4gpay name=pay1 pt=97 "
    )
    factory.set_launch(
        "( videotestsrc is-live=true pattern=ball "
        f"! video/x-raw,width={args.width},height={args.height},framerate=30/1 "
        "! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 "
        "! video/x-h264,profile=baseline ! rtph264pay name=pay0 pt=96 config-interval=1 "
        f"{audio})"
    )
    # One encoder for all clients, as a camera has.
    factory.set_shared(True)
    if args.tcp_only:
        factory.set_protocols(GstRtsp.RTSPLowerTrans.TCP)

    if args.user is not None:
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string("media.factory.role", "user")
        if args.digest:
            auth.add_digest(args.user, args.password, token)
            auth.set_supported_methods(GstRtsp.RTSPAuthMethod.DIGEST)
        else:
            auth.add_basic(GstRtspServer.RTSPAuth.make_basic(args.user, args.password), token)
            auth.set_supported_methods(GstRtsp.RTSPAuthMethod.BASIC)
        server.set_auth(auth)
        permissions = GstRtspServer.RTSPPermissions()
        permissions.add_permission_for_role("user", "media.factory.access", True)
        permissions.add_permission_for_role("user", "media.factory.construct", True)
        factory.set_permissions(permissions)

    server.get_mount_points().add_factory(args.mount, factory)

    def on_client(_server, client):
        say("connected")
        client.connect("setup-request", lambda *_: say("setup"))
        client.connect("play-request", lambda *_: say("play"))
        client.connect("teardown-request", lambda *_: say("teardown"))
        client.connect("closed", lambda *_: say("closed"))

    server.connect("client-connected", on_client)
    if server.attach(None) == 0:
        say("error cannot listen")
        sys.exit(1)
    say(f"ready {server.get_bound_port()}")
    GLib.MainLoop().run()


if __name__ == "__main__":
    main()
