#!/usr/bin/python3
"""A camera for the RTSP client's interop test: GStreamer's RTSP server (gst-rtsp-server 1.22)
serving H.264 at /cam on a free loopback port, behind Digest (RFC 2069 style, its only Digest
form) or Basic authentication, for one user.

    gst_auth_camera.py USER PASSWORD digest|basic

Prints "PORT <n>" once listening, then serves until killed."""
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer  # noqa: E402

user, password, method = sys.argv[1], sys.argv[2], sys.argv[3]
Gst.init(None)
server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service("0")

factory = GstRtspServer.RTSPMediaFactory()
factory.set_launch(
    "( videotestsrc is-live=true ! video/x-raw,width=320,height=240,framerate=25/1 "
    "! x264enc tune=zerolatency key-int-max=25 ! rtph264pay name=pay0 pt=96 config-interval=1 )"
)
factory.set_shared(True)

auth = GstRtspServer.RTSPAuth()
token = GstRtspServer.RTSPToken()
token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, "viewer")
if method == "digest":
    auth.set_supported_methods(GstRtsp.RTSPAuthMethod.DIGEST)
    auth.add_digest(user, password, token)
else:
    auth.set_supported_methods(GstRtsp.RTSPAuthMethod.BASIC)
    auth.add_basic(GstRtspServer.RTSPAuth.make_basic(user, password), token)
server.set_auth(auth)

perms = GstRtspServer.RTSPPermissions()
perms.add_permission_for_role("viewer", GstRtspServer.RTSP_PERM_MEDIA_FACTORY_ACCESS, True)
perms.add_permission_for_role("viewer", GstRtspServer.RTSP_PERM_MEDIA_FACTORY_CONSTRUCT, True)
factory.set_permissions(perms)

server.get_mount_points().add_factory("/cam", factory)
server.attach(None)
print("PORT", server.get_bound_port(), flush=True)
GLib.MainLoop().run()
