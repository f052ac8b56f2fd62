#!/usr/bin/python3
"""PlateBridge development/test RTSP camera.

THIS IS A DEV/TEST CAMERA, NOT PRODUCTION CODE.  It stands in for a real
gate camera in local development, end-to-end tests and benchmarks so the pod
agent (ffmpeg -> HLS) and the gateway can be exercised without hardware.

It is built on GStreamer's RTSP server (gst-rtsp-server) and serves a live,
moving ``videotestsrc`` pattern with the wall clock burned in, in milliseconds
(``HH:MM:SS.mmm`` UTC, top left: a ``textoverlay`` whose text a buffer probe on its
video sink pad sets to ``time.time()`` as each raw frame passes — GStreamer's
``clockoverlay`` uses strftime, which has no milliseconds), and a ``timeoverlay``
with the stream running time, encoded as

* H.264: ``x264enc tune=zerolatency speed-preset=ultrafast key-int-max=<fps>``
  (a 1 s GOP, so HLS muxers can cut 1-2 s segments) + ``rtph264pay``, or
* H.265: ``x265enc`` (gstreamer1.0-plugins-bad) + ``rtph265pay``.

The burned-in clock is what ``bench/latency.py`` reads back from screenshots of the
playing video (tesseract) to measure glass-to-glass latency: the time at which the
frame was made, against the time it was on screen. ``--no-wallclock`` turns it off.

The media factory is shared, so several clients (ffprobe, restarted ffmpeg)
can attach at once and the stream keeps working across disconnects.  Optional
RTSP basic auth is enabled with ``--user``/``--password``.

It must run under Debian's system python (``/usr/bin/python3``, which has
PyGObject) rather than the project venv::

    /usr/bin/python3 deploy/dev/camera.py --host 127.0.0.1 --port 8554 --path /gate \
        [--fps 15] [--width 640 --height 360] [--user U --password P] [--codec h264|h265]

Once listening it prints exactly one line, ``CAMERA READY rtsp://host:port/path``,
to stdout (``--port 0`` picks a free port and the line shows the real one),
then serves until SIGTERM/SIGINT and exits 0.  Diagnostics go to stderr.
Needs Debian packages python3-gi gir1.2-gst-rtsp-server-1.0
gstreamer1.0-plugins-{base,good,ugly} gstreamer1.0-x fonts-dejavu-core (and -bad for h265);
``--check`` only checks them (``deploy/probe.sh`` runs it).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

try:
    import gi
except ImportError as exc:  # pragma: no cover - environment problem
    sys.stderr.write(
        f"camera: ERROR: cannot import PyGObject ({exc}). Run it with /usr/bin/python3 (not the venv) and "
        "install Debian package python3-gi (bash deploy/setup.sh).\n"
    )
    sys.exit(2)
try:
    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer
except (ImportError, ValueError) as exc:  # pragma: no cover - environment problem
    sys.stderr.write(
        f"camera: ERROR: cannot load the GStreamer RTSP server bindings ({exc}): install Debian package "
        "gir1.2-gst-rtsp-server-1.0 (bash deploy/setup.sh).\n"
    )
    sys.exit(2)

ROLE = "platebridge"
WALLCLOCK = "wallclock"  # the textoverlay that shows the wall clock with milliseconds


def wallclock_text(now: float) -> str:
    """``HH:MM:SS.mmm`` (UTC) of Unix time ``now``: what each frame shows."""
    return time.strftime("%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}"


def burn_in_wallclock(_factory, media) -> None:
    """``media-configure`` handler: a buffer probe on the wall-clock overlay's video pad
    sets its text to the current time as each frame passes (one pipeline per client)."""
    overlay = media.get_element().get_by_name(WALLCLOCK)
    if overlay is None:
        return
    pad = overlay.get_static_pad("video_sink")

    def probe(_pad, _info):
        overlay.set_property("text", wallclock_text(time.time()))
        return Gst.PadProbeReturn.OK

    pad.add_probe(Gst.PadProbeType.BUFFER, probe)

CODECS = {
    # codec: (encoder, encoder options, caps, payloader, debian package)
    "h264": (
        "x264enc",
        "tune=zerolatency speed-preset=ultrafast key-int-max={fps} bframes=0",
        "video/x-h264,profile=constrained-baseline",
        "rtph264pay",
        "gstreamer1.0-plugins-ugly",
    ),
    "h265": (
        "x265enc",
        "tune=zerolatency speed-preset=ultrafast key-int-max={fps}",
        "video/x-h265,profile=main",
        "rtph265pay",
        "gstreamer1.0-plugins-bad",
    ),
}


def log(msg: str) -> None:
    sys.stderr.write(f"camera: {msg}\n")
    sys.stderr.flush()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="PlateBridge dev/test RTSP camera (not production)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8554, help="RTSP port (0 = pick a free one)")
    p.add_argument("--path", default="/gate", help="mount path (default /gate)")
    p.add_argument("--fps", type=int, default=15)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=360)
    p.add_argument("--user", default=None, help="enable RTSP basic auth with this user")
    p.add_argument("--password", default=None, help="password for --user")
    p.add_argument("--codec", choices=sorted(CODECS), default="h264")
    p.add_argument("--no-wallclock", action="store_true", help="do not burn in the millisecond wall clock")
    p.add_argument("--check", action="store_true",
                   help="only check that every GStreamer element of the pipeline is installed (exit 0/2)")
    p.add_argument(
        "--pattern",
        default="ball",
        help="videotestsrc pattern (default ball: moving; smpte also animates via motion)",
    )
    a = p.parse_args(argv)
    if not a.path.startswith("/"):
        a.path = "/" + a.path
    if (a.user is None) != (a.password is None):
        p.error("--user and --password must be given together")
    if a.fps < 1 or a.width < 16 or a.height < 16:
        p.error("fps must be >= 1 and width/height >= 16")
    if not 0 <= a.port <= 65535:
        p.error("port out of range")
    return a


def build_launch(a: argparse.Namespace) -> str:
    enc, enc_opts, enc_caps, pay, _pkg = CODECS[a.codec]
    return (
        "( "
        f"videotestsrc is-live=true pattern={a.pattern} "
        f"! video/x-raw,format=I420,width={a.width},height={a.height},framerate={a.fps}/1 "
        f"! textoverlay name={WALLCLOCK} text=\"\" halignment=left valignment=top "
        'font-desc="DejaVu Sans Mono Bold, 22" shaded-background=true '
        "! timeoverlay halignment=right valignment=bottom "
        'font-desc="DejaVu Sans Mono, 12" shaded-background=true '
        "! videoconvert ! video/x-raw,format=I420 "
        f"! {enc} {enc_opts.format(fps=a.fps)} ! {enc_caps} "
        f"! {pay} name=pay0 pt=96 config-interval=1 "
        ")"
    )


#: GStreamer element -> the Debian package that provides it (bookworm), for every element the
#: pipeline uses except the codec's own (in CODECS). ``deploy/probe.sh`` runs ``--check``.
ELEMENTS = {
    "videotestsrc": "gstreamer1.0-plugins-base",
    "videoconvert": "gstreamer1.0-plugins-base",
    "textoverlay": "gstreamer1.0-x",  # the Pango plugin: "GStreamer plugins for X11 and Pango"
    "timeoverlay": "gstreamer1.0-x",
}
FONT = ("/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf", "fonts-dejavu-core")


def missing_elements(codec: str) -> list[tuple[str, str]]:
    """``(element, Debian package)`` for each element the ``codec`` pipeline needs that
    GStreamer cannot find (``Gst.init`` must have run). Empty when all are there."""
    enc, _o, _c, pay, pkg = CODECS[codec]
    needed = {**ELEMENTS, enc: pkg, pay: "gstreamer1.0-plugins-good"}
    return [(el, p) for el, p in needed.items() if Gst.ElementFactory.find(el) is None]


def check_elements(a: argparse.Namespace) -> None:
    """Exit 2 naming each missing element and its Debian package."""
    missing = missing_elements(a.codec)
    if missing:
        for el, p in missing:
            log(f"ERROR: GStreamer element '{el}' not available (install Debian package {p})")
        if a.codec == "h265":
            log("ERROR: --codec h265 needs x265enc from gstreamer1.0-plugins-bad; use --codec h264")
        sys.exit(2)
    if not os.path.exists(FONT[0]):
        log(f"WARNING: {FONT[0]} is missing (install Debian package {FONT[1]}); the clock overlay falls back "
            "to another font")


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)

    # Install SIGTERM/SIGINT handling first so a signal during start-up is
    # queued and handled by the first main-loop iteration (clean exit 0).
    loop = GLib.MainLoop()
    stopping = {"sig": None}

    def on_signal(signame: str) -> bool:
        if stopping["sig"] is None:
            stopping["sig"] = signame
            log(f"{signame} received, shutting down")
            loop.quit()
        # Keep the handler installed: removing the last GLib unix-signal source
        # restores SIG_DFL, and a second SIGTERM would then kill us with 143.
        return GLib.SOURCE_CONTINUE

    GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGTERM, on_signal, "SIGTERM")
    GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGINT, on_signal, "SIGINT")

    Gst.init(None)
    check_elements(a)
    if a.check:
        log(f"check: every GStreamer element of the {a.codec} pipeline is installed")
        return 0

    server = GstRtspServer.RTSPServer()
    server.set_address(a.host)
    server.set_service(str(a.port))

    factory = GstRtspServer.RTSPMediaFactory()
    launch = build_launch(a)
    factory.set_launch(launch)
    # one pipeline per client: a shared pipeline restamps the stream when a second client
    # joins (DTS jumps back), which stalls the pod's ffmpeg whenever someone runs ffprobe
    factory.set_shared(False)
    factory.set_latency(100)
    if not a.no_wallclock:
        factory.connect("media-configure", burn_in_wallclock)

    if a.user is not None:
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, ROLE)
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(a.user, a.password), token)
        server.set_auth(auth)
        factory.add_role_from_structure(
            Gst.Structure.from_string(
                f"{ROLE}, media.factory.access=(boolean)true, media.factory.construct=(boolean)true"
            )[0]
        )

    server.get_mount_points().add_factory(a.path, factory)

    if server.attach(None) == 0:
        log(f"ERROR: cannot listen on {a.host}:{a.port} (address in use or not local?)")
        return 1

    # Periodically drop dead sessions so restarted clients do not leak them.
    pool = server.get_session_pool()
    GLib.timeout_add_seconds(2, lambda: (pool.cleanup(), True)[1])

    port = server.get_bound_port()
    host = f"[{a.host}]" if ":" in a.host else a.host
    log(f"pipeline: {launch}")
    log(f"codec={a.codec} {a.width}x{a.height}@{a.fps} GOP={a.fps} frames (1 s) auth={'on' if a.user else 'off'}")
    sys.stdout.write(f"CAMERA READY rtsp://{host}:{port}{a.path}\n")
    sys.stdout.flush()

    try:
        loop.run()
    except KeyboardInterrupt:
        pass
    # Disconnect clients so their media pipelines are torn down before exit.
    server.client_filter(lambda _srv, _client, *_: GstRtspServer.RTSPFilterResult.REMOVE, None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
