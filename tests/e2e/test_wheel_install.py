"""The gateway as users install it: from the built wheel, in a fresh venv, outside the checkout.

Issue 10: the wheel once shipped only ``static/*.html``, so a wheel-installed gateway answered
``/assets/watch.js`` with 500 and the watch page had no player; the editable install used by
every other test could not see it. Here the wheel is built from this checkout (``pip wheel``,
the way ``deploy/gateway/Dockerfile`` builds it), installed into a new venv in a temporary
directory, and that venv's ``platebridge-gateway`` serves a real pod's camera to Debian's
chromium until the video plays.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import ROOT, assert_video_plays, make_stack, started

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

VENDORED = "gateway/static/vendor/hls.min.js"


def clean_source(dest: Path, *, npm: bool = True) -> Path:
    """A copy of the checkout as a fresh clone has it (tracked and new, not ignored, files; no
    ``build/`` left over from an earlier in-tree build, which would hide missing package data),
    plus the npm copy of hls.js when ``npm`` (as after ``deploy/setup.sh``)."""
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        if (ROOT / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)
    if npm:
        shutil.copytree(ROOT / "gateway/web/node_modules/hls.js", dest / "gateway/web/node_modules/hls.js")
    return dest


def build_wheel(src: Path, out: Path) -> subprocess.CompletedProcess:
    """``pip wheel --no-deps`` of the project in ``src`` into ``out`` (as the Dockerfile does)."""
    return subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check",
                           "-q", "-w", str(out), str(src)], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    proc = build_wheel(clean_source(tmp_path_factory.mktemp("src")), out)
    assert proc.returncode == 0, proc.stderr
    [whl] = out.glob("platebridge-*.whl")
    return whl


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory, wheel) -> Path:
    """A fresh venv (no access to the checkout or the project's .venv) with only the wheel installed."""
    venv = tmp_path_factory.mktemp("wheel-venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    proc = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                           str(wheel)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    return venv


def test_wheel_carries_every_static_asset(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    static = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "gateway" / "static").iterdir() if p.is_file())
    assert static and set(static) <= names, f"missing from the wheel: {set(static) - names}"
    assert VENDORED in names and "gateway/static/vendor/hls.js.LICENSE" in names
    # the nginx data plane's grant check: without it a wheel-installed gateway would fall back
    # to serving every segment itself
    assert "gateway/lua/platebridge_grant.lua" in names
    npm_copy = ROOT / "gateway/web/node_modules/hls.js/dist/hls.min.js"
    assert zipfile.ZipFile(wheel).read(VENDORED) == npm_copy.read_bytes()


def test_wheel_build_without_npm_assets_fails_clearly(tmp_path):
    """A checkout where npm never ran must not produce a wheel whose watch page has no player."""
    src = clean_source(tmp_path / "src", npm=False)
    out = tmp_path / "out"
    proc = build_wheel(src, out)
    said = proc.stdout + proc.stderr
    assert proc.returncode != 0, said
    assert "hls.js is missing" in said and "npm ci --prefix gateway/web" in said, said
    assert not list(out.glob("*.whl"))


def test_wheel_installed_gateway_plays_the_watch_page(tmp_path, wheel_venv, browser):
    gateway_bin = wheel_venv / "bin" / "platebridge-gateway"
    where = subprocess.run([str(wheel_venv / "bin" / "python"), "-c", "import gateway; print(gateway.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path, check=True).stdout.strip()
    assert where.startswith(str(wheel_venv)), f"gateway imported from {where}, not the wheel"
    with started(make_stack(tmp_path / "stack", gateway_bin=gateway_bin)) as s:
        for asset in ("watch.js", "hls.min.js"):
            r = httpx.get(f"{s.gateway_url}/assets/{asset}", timeout=10)
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript"), (asset, r.text)
        assert httpx.get(f"{s.gateway_url}/readyz", timeout=10).json()["hlsjs"] is True
        browser.get(s.watch_url(s.user_token()))
        assert_video_plays(browser)
