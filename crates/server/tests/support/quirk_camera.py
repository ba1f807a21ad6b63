#!/usr/bin/python3
"""A scripted RTSP camera for the pull tests, written from scratch with the standard library
(none of ferrocast's RTSP code): it answers each request the way a misbehaving camera does,
chosen by --scenario, and sends RTP of an H.264 Annex B file (made by ffmpeg in the test),
packetized here per RFC 6184 (single NAL unit packets, FU-A above 1400 bytes), 90 kHz
timestamps, sequence numbers and SSRC starting at random values, looped at 30 fps.

  quirk_camera.py --scenario NAME --h264 FILE [--port 0] [--wrong-sps FILE]
                  [--auth basic|digest-md5|digest-sha256|digest-stale|digest-realm-change
                   --user U --password P]

Prints `ready PORT PATH` once listening (PATH is what the client puts after host:port), then
one line per thing the tests follow: `request METHOD URL session=yes|no`, `keepalive ok`,
`session dropped REASON`, `rtcp`, `closed`.

Answers are written as these cameras send them (status lines, header names and their case,
Server headers, Session with ;timeout=, Content-Base with a trailing slash), in the style of
the vendors named below; they are written from their public descriptions and peers' bug
reports, not captured from devices.

Scenarios (the camera behaviour each reproduces):
  hikvision         the good case, Hikvision style: path /Streaming/Channels/101, SDP with
                    sprop-parameter-sets, absolute a=control URLs, Content-Base ending in '/',
                    `Session: 12345678;timeout=60`.
  dahua_no_sprop    Dahua style (`Server: Rtsp Server/3.0`, path with a query, relative
                    a=control under a Content-Base ending in '/'): no sprop-parameter-sets,
                    SPS/PPS in band only (MediaMTX #1327, ZLMediaKit #1246).
  axis_pps_less     Axis style (`Server: AXIS ...`, lower-case header names): sprop with the
                    SPS only, PPS in band (retina #62).
  wrong_sprop       sprop-parameter-sets from another stream (another picture size) than the
                    one sent: the in-band SPS is the truth (--wrong-sps gives that SPS).
  options_403       OPTIONS answered `403 Forbidden` (ZLMediaKit #4015): the rest works.
  keepalive_session `Session: 12345678;timeout=4`; a GET_PARAMETER or OPTIONS without the
                    Session header gets 454 and drops the session (RTP stops), with it 200;
                    no request with the session for timeout+2 s drops it too.
  udp_461           SETUP over UDP answered `461 Unsupported Transport`; TCP interleaved works.
  slow              every answer one second late (a camera's busy CPU).
  stuck_describe    DESCRIBE never answered (the connection stays open).
  junk              DESCRIBE answered with binary junk.
  close_mid         DESCRIBE's answer cut in the middle of its SDP, then the connection closed.
  endless_header    DESCRIBE's answer is one header line that never ends.
  stall             RTP for one second after PLAY, then nothing (a camera that hangs).
Authentication (--auth) applies to every request but OPTIONS: Basic only; Digest MD5 with
qop=auth (RFC 2617); Digest SHA-256 (RFC 7616); digest-stale: MD5, and the first correct
answer to the first nonce gets 401 with `stale=TRUE` and a new nonce; digest-realm-change:
MD5, and the first correct answer gets 401 under a new realm and nonce (a camera whose realm
names its boot or serial, seen changing after a reboot), the answer for the new realm passes.
"""
import argparse
import base64
import hashlib
import os
import random
import socket
import struct
import sys
import threading
import time

STYLES = {
    "hikvision": {"path": "/Streaming/Channels/101", "server": None, "cseq": "CSeq",
                  "ctype": "Content-Type", "clen": "Content-Length", "absolute": True},
    "dahua": {"path": "/cam/realmonitor?channel=1&subtype=0", "server": "Rtsp Server/3.0",
              "cseq": "CSeq", "ctype": "Content-Type", "clen": "Content-Length", "absolute": False},
    "axis": {"path": "/axis-media/media.amp", "server": "AXIS Communications AB",
             "cseq": "cseq", "ctype": "content-type", "clen": "content-length", "absolute": True},
}
STYLE_OF = {"dahua_no_sprop": "dahua", "axis_pps_less": "axis"}
MAX_REQUEST = 16384
lock = threading.Lock()


def say(line):
    with lock:
        print(line, flush=True)


def nal_units(data):
    """Splits Annex B into NAL units (start codes 00 00 01 and 00 00 00 01)."""
    out, i, start = [], 0, None
    while i + 3 <= len(data):
        if data[i:i + 3] == b"\x00\x00\x01":
            if start is not None:
                out.append(data[start:i].rstrip(b"\x00"))
            i += 3
            start = i
        else:
            i += 1
    if start is not None:
        out.append(data[start:])
    return [n for n in out if n]


def access_units(nals):
    """Groups NAL units into access units at each access unit delimiter (type 9)."""
    aus = []
    for n in nals:
        if n[0] & 0x1F == 9 or not aus:
            aus.append([])
        if n[0] & 0x1F != 9:
            aus[-1].append(n)
    return [a for a in aus if a]


def rtp_packets(nal, last):
    """RFC 6184 §5.6 single NAL unit packet, or §5.8 FU-A fragments; (payload, marker)."""
    if len(nal) <= 1400:
        return [(nal, last)]
    head, body = nal[0], nal[1:]
    chunks = [body[i:i + 1400] for i in range(0, len(body), 1400)]
    out = []
    for i, c in enumerate(chunks):
        fu_header = (head & 0x1F) | (0x80 if i == 0 else 0) | (0x40 if i == len(chunks) - 1 else 0)
        out.append((bytes([(head & 0xE0) | 28, fu_header]) + c, last and i == len(chunks) - 1))
    return out


class Session:
    def __init__(self, aus):
        self.id = "12345678"
        self.aus = aus
        self.alive = True
        self.playing = False
        self.tcp = None
        self.udp_dest = None
        self.last_request = time.monotonic()

    def send_loop(self, conn, args):
        """Sends RTP in real time until the session is dropped or the connection fails."""
        seq = random.randrange(65536)
        ts = random.randrange(1 << 32)
        ssrc = random.randrange(1 << 32)
        out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM) if self.udp_dest else None
        if out:
            # Not the server_port announced in SETUP: some cameras send from another port.
            out.bind(("127.0.0.1", 0))
        start = time.monotonic()
        n = 0
        try:
            while self.alive:
                for au in self.aus:
                    if not self.alive:
                        return
                    if args.scenario == "stall" and time.monotonic() - start > 1.0:
                        say("stalled")
                        while self.alive:
                            time.sleep(0.2)
                        return
                    pkts = []
                    for i, nal in enumerate(au):
                        pkts += rtp_packets(nal, i == len(au) - 1)
                    for payload, marker in pkts:
                        header = struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | 96, seq, ts, ssrc)
                        seq = (seq + 1) & 0xFFFF
                        if out:
                            out.sendto(header + payload, self.udp_dest)
                        else:
                            frame = b"$" + bytes([self.tcp]) + struct.pack("!H", len(header) + len(payload))
                            with conn.write_lock:
                                conn.sock.sendall(frame + header + payload)
                    ts = (ts + 3000) & 0xFFFFFFFF
                    n += 1
                    delay = start + n / 30.0 - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
        except OSError:
            self.alive = False
        finally:
            if out:
                out.close()


class Conn:
    def __init__(self, sock, args, sps, pps, wrong_sps, aus, port):
        self.sock = sock
        self.args = args
        self.write_lock = threading.Lock()
        self.sps, self.pps, self.wrong_sps = sps, pps, wrong_sps
        self.aus = aus
        self.port = port
        self.style = STYLES[STYLE_OF.get(args.scenario, "hikvision")]
        self.session = None
        self.nonce = os.urandom(8).hex()
        self.stale_sent = False
        # The last nc a client used with each nonce: it must count up (RFC 7616 3.4).
        self.last_nc = {}
        self.realm = "IP Camera(C6179)"
        self.rtcp_socks = []

    # --- reading -------------------------------------------------------------------------
    def read_request(self, buf):
        """One request (interleaved RTCP from the client skipped); None at EOF."""
        while True:
            while buf and buf[0:1] == b"$":
                if len(buf) < 4:
                    break
                size = struct.unpack("!H", buf[2:4])[0]
                if len(buf) < 4 + size:
                    break
                say("rtcp")
                del buf[:4 + size]
            end = buf.find(b"\r\n\r\n")
            if end >= 0 and buf[0:1] != b"$":
                head = bytes(buf[:end]).decode("latin-1")
                lines = head.split("\r\n")
                headers = {}
                for line in lines[1:]:
                    k, _, v = line.partition(":")
                    headers[k.strip().lower()] = v.strip()
                length = int(headers.get("content-length", "0"))
                if len(buf) >= end + 4 + length:
                    del buf[:end + 4 + length]
                    parts = lines[0].split(" ")
                    return parts[0], parts[1] if len(parts) > 1 else "", headers
            if len(buf) > MAX_REQUEST:
                return None
            data = self.sock.recv(65536)
            if not data:
                return None
            buf += data

    # --- answering -----------------------------------------------------------------------
    def answer(self, cseq, status, headers=(), body=b""):
        st = self.style
        lines = [f"RTSP/1.0 {status}", f"{st['cseq']}: {cseq}"]
        if st["server"]:
            lines.append(f"Server: {st['server']}")
        lines.append("Date: " + time.strftime("%a, %b %d %Y %H:%M:%S GMT", time.gmtime()))
        lines += list(headers)
        if body:
            lines.append(f"{st['clen']}: {len(body)}")
        raw = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
        if self.args.scenario == "slow":
            time.sleep(1.0)
        with self.write_lock:
            self.sock.sendall(raw)

    def base_url(self):
        return f"rtsp://127.0.0.1:{self.port}{self.style['path']}/"

    def sdp(self):
        sc = self.args.scenario
        b64 = lambda n: base64.b64encode(n).decode()  # noqa: E731
        fmtp = "a=fmtp:96 packetization-mode=1"
        if sc == "wrong_sprop":
            fmtp += f";sprop-parameter-sets={b64(self.wrong_sps)},{b64(self.pps)}"
        elif sc == "axis_pps_less":
            fmtp += f";profile-level-id={self.sps[1:4].hex()};sprop-parameter-sets={b64(self.sps)}"
        elif sc != "dahua_no_sprop":
            fmtp += f";profile-level-id={self.sps[1:4].hex()};sprop-parameter-sets={b64(self.sps)},{b64(self.pps)}"
        control = (self.base_url() + "trackID=1") if self.style["absolute"] else "trackID=1"
        return "\r\n".join([
            "v=0", "o=- 1109162014219182 1109162014219192 IN IP4 127.0.0.1",
            "s=Media Presentation", "e=NONE", "b=AS:5050", "t=0 0",
            f"a=control:{self.base_url() if self.style['absolute'] else '*'}",
            "m=video 0 RTP/AVP 96", "c=IN IP4 0.0.0.0", "b=AS:5000",
            "a=recvonly", "a=x-dimensions:0,0", f"a=control:{control}",
            "a=rtpmap:96 H264/90000", fmtp, "",
        ]).encode()

    def authorized(self, method, uri, headers, cseq):
        """Checks credentials; answers 401 and returns False when they are missing or wrong."""
        mode = self.args.auth
        if not mode or method == "OPTIONS":
            return True
        realm = self.realm
        got = headers.get("authorization", "")
        ok, stale = False, False
        if mode == "basic":
            want = base64.b64encode(f"{self.args.user}:{self.args.password}".encode()).decode()
            ok = got == f"Basic {want}"
            challenge = f'Basic realm="{realm}"'
        else:
            algo = "SHA-256" if mode == "digest-sha256" else "MD5"
            h = (lambda s: hashlib.sha256(s.encode()).hexdigest()) if algo == "SHA-256" else \
                (lambda s: hashlib.md5(s.encode()).hexdigest())
            if got.startswith("Digest "):
                p = {}
                for part in split_params(got[7:]):
                    k, _, v = part.partition("=")
                    p[k.strip().lower()] = v.strip().strip('"')
                ha1 = h(f"{self.args.user}:{realm}:{self.args.password}")
                ha2 = h(f"{method}:{p.get('uri', '')}")
                want = h(f"{ha1}:{p.get('nonce')}:{p.get('nc')}:{p.get('cnonce')}:{p.get('qop')}:{ha2}")
                nc = p.get("nc", "")
                fresh_nc = len(nc) == 8 and all(c in "0123456789abcdef" for c in nc) \
                    and int(nc, 16) > self.last_nc.get(p.get("nonce"), 0)
                # The response must be for this request (uri as in its request line) and this
                # realm, with an nc that counts up for the nonce.
                ok = p.get("username") == self.args.user and p.get("response") == want \
                    and p.get("nonce") == self.nonce and p.get("qop") == "auth" \
                    and p.get("uri") == uri and p.get("realm") == realm and fresh_nc
                if ok:
                    self.last_nc[p.get("nonce")] = int(nc, 16)
                elif got:
                    say(f"digest refused: uri={p.get('uri')!r} for {uri!r}, realm={p.get('realm')!r}, nc={nc!r}")
                if ok and mode == "digest-stale" and not self.stale_sent:
                    # Right answer to a nonce the camera considers expired: stale=TRUE.
                    self.stale_sent, ok, stale = True, False, True
                    self.nonce = os.urandom(8).hex()
                if ok and mode == "digest-realm-change" and not self.stale_sent:
                    # Right answer for a realm the camera no longer uses.
                    self.stale_sent, ok = True, False
                    self.realm, realm = "IP Camera(D7280)", "IP Camera(D7280)"
                    self.nonce = os.urandom(8).hex()
                    say("realm changed")
            challenge = f'Digest realm="{realm}", qop="auth", nonce="{self.nonce}", ' \
                        f'algorithm={algo}, stale="{"TRUE" if stale else "FALSE"}"'
        if not ok:
            say(f"unauthorized {method}{' stale' if stale else ''}")
            self.answer(cseq, "401 Unauthorized", [f"WWW-Authenticate: {challenge}"])
        return ok

    def serve(self):
        buf = bytearray()
        sc = self.args.scenario
        try:
            while True:
                req = self.read_request(buf)
                if req is None:
                    break
                method, url, headers = req
                cseq = headers.get("cseq", "0")
                has_session = "session" in headers
                say(f"request {method} {url} session={'yes' if has_session else 'no'}")
                if self.session:
                    self.session.last_request = time.monotonic()
                if method == "OPTIONS" and sc == "options_403":
                    self.answer(cseq, "403 Forbidden")
                    continue
                if not self.authorized(method, url, headers, cseq):
                    continue
                if method in ("OPTIONS", "GET_PARAMETER") and self.session and self.session.playing:
                    if sc == "keepalive_session" and not has_session:
                        self.answer(cseq, "454 Session Not Found")
                        self.drop("keep-alive without Session")
                        continue
                    if has_session:
                        say("keepalive ok")
                if method == "OPTIONS":
                    self.answer(cseq, "200 OK", ["Public: OPTIONS, DESCRIBE, PLAY, PAUSE, SETUP, "
                                                 "TEARDOWN, SET_PARAMETER, GET_PARAMETER"])
                elif method == "DESCRIBE":
                    if sc == "stuck_describe":
                        while True:
                            time.sleep(1)
                    if sc == "junk":
                        with self.write_lock:
                            # The same junk every run (not '$', which would start interleaved
                            # data, nor 'R' of RTSP/1.0): what a camera's crashed firmware or a
                            # non-RTSP service on port 554 sends.
                            junk = random.Random(17)
                            self.sock.sendall(b"\x8f" + bytes(junk.randrange(256) for _ in range(4095)))
                        continue
                    if sc == "endless_header":
                        with self.write_lock:
                            self.sock.sendall(b"RTSP/1.0 200 OK\r\nCSeq: " + cseq.encode() + b"\r\nX-Pad: ")
                        while True:
                            with self.write_lock:
                                self.sock.sendall(b"a" * 4096)
                            time.sleep(0.01)
                    body = self.sdp()
                    heads = [f"{self.style['ctype']}: application/sdp", f"Content-Base: {self.base_url()}"]
                    if sc == "close_mid":
                        raw = f"RTSP/1.0 200 OK\r\nCSeq: {cseq}\r\nContent-Type: application/sdp\r\n" \
                              f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:len(body) // 2]
                        with self.write_lock:
                            self.sock.sendall(raw)
                        break
                    self.answer(cseq, "200 OK", heads, body)
                elif method == "SETUP":
                    self.setup(cseq, url, headers)
                elif method == "PLAY":
                    if not self.session or not has_session:
                        self.answer(cseq, "454 Session Not Found")
                        continue
                    self.answer(cseq, "200 OK", [self.session_header(),
                                                 f"RTP-Info: url={self.base_url()}trackID=1;seq=0;rtptime=0"])
                    if not self.session.playing:
                        self.session.playing = True
                        threading.Thread(target=self.session.send_loop, args=(self, self.args), daemon=True).start()
                        if sc == "keepalive_session":
                            threading.Thread(target=self.watchdog, daemon=True).start()
                elif method == "TEARDOWN":
                    self.answer(cseq, "200 OK", [self.session_header()])
                    self.drop("TEARDOWN")
                else:
                    self.answer(cseq, "200 OK", [self.session_header()] if self.session else [])
        except OSError:
            pass
        finally:
            self.drop("connection closed")
            say("closed")
            self.sock.close()

    def session_header(self):
        timeout = 4 if self.args.scenario == "keepalive_session" else 60
        return f"Session: {self.session.id if self.session else '12345678'};timeout={timeout}"

    def setup(self, cseq, url, headers):
        if not url.endswith("trackID=1"):
            self.answer(cseq, "404 Not Found")
            return
        transport = headers.get("transport", "")
        tcp = "interleaved=" in transport or "RTP/AVP/TCP" in transport
        if not tcp and self.args.scenario == "udp_461":
            self.answer(cseq, "461 Unsupported Transport")
            return
        self.session = self.session or Session(self.aus)
        if tcp:
            chans = next((p.split("=")[1] for p in transport.split(";") if p.startswith("interleaved=")), "0-1")
            self.session.tcp = int(chans.split("-")[0])
            reply = f"RTP/AVP/TCP;unicast;interleaved={chans};ssrc=1A2B3C4D;mode=\"play\""
        else:
            ports = next((p.split("=")[1] for p in transport.split(";") if p.startswith("client_port=")), None)
            if ports is None:
                self.answer(cseq, "461 Unsupported Transport")
                return
            rtp_port = int(ports.split("-")[0])
            self.session.udp_dest = ("127.0.0.1", rtp_port)
            # Announced ports that exist (receiver reports arrive there); RTP leaves from another.
            for _ in range(2):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.bind(("127.0.0.1", 0))
                self.rtcp_socks.append(s)
                threading.Thread(target=count_rtcp, args=(s,), daemon=True).start()
            sp = "-".join(str(s.getsockname()[1]) for s in self.rtcp_socks[-2:])
            reply = f"RTP/AVP;unicast;client_port={ports};server_port={sp};ssrc=1A2B3C4D;mode=\"play\""
        self.answer(cseq, "200 OK", [self.session_header(), f"Transport: {reply}"])

    def watchdog(self):
        while self.session and self.session.alive:
            if time.monotonic() - self.session.last_request > 6:
                self.drop("session timed out")
            time.sleep(0.2)

    def drop(self, reason):
        if self.session and self.session.alive:
            self.session.alive = False
            say(f"session dropped {reason}")
        self.session = None


def count_rtcp(sock):
    try:
        while sock.recv(2048):
            say("rtcp")
    except OSError:
        pass


def split_params(s):
    """Splits `a="x, y", b=z` at the commas outside quotes."""
    out, cur, quoted = [], "", False
    for ch in s:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    out.append(cur)
    return [p for p in out if p.strip()]


def first_nal(nals, kind):
    return next(n for n in nals if n[0] & 0x1F == kind)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenario", required=True)
    ap.add_argument("--h264", required=True)
    ap.add_argument("--wrong-sps")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--auth", choices=["basic", "digest-md5", "digest-sha256", "digest-stale", "digest-realm-change"])
    ap.add_argument("--user", default="admin")
    ap.add_argument("--password", default="")
    args = ap.parse_args()

    with open(args.h264, "rb") as f:
        nals = nal_units(f.read())
    sps, pps = first_nal(nals, 7), first_nal(nals, 8)
    wrong_sps = None
    if args.wrong_sps:
        with open(args.wrong_sps, "rb") as f:
            wrong_sps = first_nal(nal_units(f.read()), 7)
    aus = access_units(nals)

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", args.port))
    listener.listen(16)
    port = listener.getsockname()[1]
    style = STYLES[STYLE_OF.get(args.scenario, "hikvision")]
    say(f"ready {port} {style['path']}")
    while True:
        sock, _ = listener.accept()
        conn = Conn(sock, args, sps, pps, wrong_sps, aus, port)
        threading.Thread(target=conn.serve, daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
