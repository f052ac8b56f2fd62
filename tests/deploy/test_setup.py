"""deploy/setup.sh and deploy/probe.sh: a fresh machine gets every capability, and a missing one
fails setup at once, naming the Debian package that provides it.

Issue 10: ``gstreamer1.0-x`` (clockoverlay/timeoverlay) was missing from setup, and the test
camera's hint named the wrong package; CI was green only because the package had been
installed by hand. Removing a package from this machine would make setup reinstall it, so
these tests hide one capability at a time from the probes instead (a GStreamer plugin
directory without the plugin, a PATH without the program, a program without the feature)
and check what setup and the probes say.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SETUP = REPO / "deploy" / "setup.sh"
PROBE = REPO / "deploy" / "probe.sh"
CAMERA = REPO / "deploy" / "dev" / "camera.py"
GST_PLUGINS = Path("/usr/lib/x86_64-linux-gnu/gstreamer-1.0")


def apt_packages() -> set[str]:
    m = re.search(r"^APT_PACKAGES=\((.*?)^\)", SETUP.read_text(), re.MULTILINE | re.DOTALL)
    assert m, "APT_PACKAGES not found in deploy/setup.sh"
    return set(m.group(1).split())


def run(script: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **env}, cwd=REPO)


def gst_without(tmp_path: Path, plugin: str) -> dict[str, str]:
    """Environment in which GStreamer sees every system plugin except ``plugin`` (a .so name)."""
    plugins = tmp_path / "gst-plugins"
    plugins.mkdir()
    libdir = next(d for d in (GST_PLUGINS, *Path("/usr/lib").glob("*/gstreamer-1.0")) if (d / plugin).exists())
    for so in libdir.glob("*.so"):
        if so.name != plugin:
            (plugins / so.name).symlink_to(so)
    return {"GST_PLUGIN_SYSTEM_PATH_1_0": str(plugins), "GST_REGISTRY_1_0": str(tmp_path / "registry.bin")}


def path_without(tmp_path: Path, *names: str, fakes: dict[str, str] | None = None) -> dict[str, str]:
    """Environment whose PATH has every program of the current PATH except ``names``, plus
    ``fakes`` (name → shell script body) standing in for a program without a feature."""
    farm = tmp_path / "bin"
    farm.mkdir()
    for d in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(d):
            continue
        for entry in os.scandir(d):
            if entry.name in names or (farm / entry.name).exists() or entry.name in (fakes or {}):
                continue
            if os.access(entry.path, os.X_OK) and not entry.is_dir():
                (farm / entry.name).symlink_to(entry.path)
    for name, body in (fakes or {}).items():
        (farm / name).write_text("#!/bin/sh\n" + body + "\n")
        (farm / name).chmod(0o755)
    return {"PATH": str(farm)}


def test_probes_pass_on_this_machine():
    proc = run(PROBE, {})
    assert proc.returncode == 0, proc.stderr
    assert "every capability present" in proc.stdout


def test_setup_with_the_pango_plugin_gone_fails_naming_gstreamer1_0_x(tmp_path):
    """The very fault of issue 10, through the whole of setup.sh."""
    proc = run(SETUP, gst_without(tmp_path, "libgstpango.so"))
    assert proc.returncode != 0
    # the camera's overlays (the millisecond wall clock is a textoverlay) live in the Pango plugin
    assert "GStreamer element 'textoverlay' (install Debian package gstreamer1.0-x)" in proc.stderr, proc.stderr
    assert "setup: ERROR: capabilities missing" in proc.stderr
    assert "setup: OK" not in proc.stdout


def test_camera_names_the_right_package(tmp_path):
    proc = subprocess.run(["/usr/bin/python3", str(CAMERA), "--port", "0"], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **gst_without(tmp_path, "libgstx264.so")})
    assert proc.returncode == 2
    assert "GStreamer element 'x264enc' not available (install Debian package gstreamer1.0-plugins-ugly)" in proc.stderr


@pytest.mark.parametrize(("hide", "fakes", "expected"), [
    (("ffmpeg", "ffprobe"), {}, "ffmpeg and ffprobe (install Debian package ffmpeg)"),
    ((), {"ffmpeg": 'case "$2" in -encoders) echo " V....D libx265 x";; *) echo " DE hls x";; esac',
          "ffprobe": "exit 0"}, "ffmpeg encoder libx264 (install Debian package ffmpeg)"),
    (("chromedriver",), {}, "chromedriver (install Debian package chromium-driver)"),
    ((), {"nginx": "echo 'configure arguments: --with-http_ssl_module' >&2"},
     "nginx with secure_link (install Debian package nginx-extras)"),
    (("wrk",), {}, "wrk (install Debian package wrk)"),
    (("caddy",), {}, "caddy (install Debian package caddy)"),
    (("shellcheck",), {}, "shellcheck (install Debian package shellcheck)"),
    (("tesseract",), {}, "tesseract OCR (bench/latency.py reads the camera clock) (install Debian package "
                         "tesseract-ocr)"),
])
def test_probe_names_the_package_of_each_missing_capability(tmp_path, hide, fakes, expected):
    proc = run(PROBE, path_without(tmp_path, *hide, fakes=fakes))
    assert proc.returncode == 1
    assert f"probe: MISSING {expected}" in proc.stderr, proc.stderr


def test_every_package_a_probe_or_the_camera_names_is_installed_by_setup():
    named = set(re.findall(r'fail "[^"]*" ([a-z0-9.+-]+(?: [a-z0-9.+-]+)*)', PROBE.read_text()))
    named = {pkg for group in named for pkg in group.split()}
    named |= set(re.findall(r'"(gstreamer1\.0-[a-z-]+|fonts-[a-z-]+)"',
                            CAMERA.read_text())) - {"gstreamer1.0-plugins-bad"}
    assert named, "no package names found: the probe format changed"
    assert named <= apt_packages(), f"probed but not installed by setup: {named - apt_packages()}"
