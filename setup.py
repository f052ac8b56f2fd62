"""Build hook: vendor hls.js into the gateway package.

Everything else about the package is in ``pyproject.toml``. The gateway's
watch page needs ``hls.min.js``; it comes from npm (``gateway/web``, pinned by
its ``package-lock.json``; ``bash deploy/setup.sh`` runs ``npm ci``). A wheel
must carry it, because a gateway installed with ``pip install <wheel>`` has no
npm, so ``build_py`` copies ``hls.min.js`` and its licence into
``gateway/static/vendor/`` of the build and **fails the build** when it is
missing. Editable installs (``pip install -e``) skip the copy: the source tree
serves it from ``gateway/web/node_modules`` directly.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
HLSJS_DIR = HERE / "gateway" / "web" / "node_modules" / "hls.js"
VENDORED = {  # source (in the npm package) -> name in gateway/static/vendor/
    HLSJS_DIR / "dist" / "hls.min.js": "hls.min.js",
    HLSJS_DIR / "LICENSE": "hls.js.LICENSE",
}


class BuildPyWithHlsJs(build_py):
    """``build_py`` that also vendors hls.js (see the module docstring)."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        missing = [str(src.relative_to(HERE)) for src in VENDORED if not src.is_file()]
        if missing:
            raise SystemExit(
                "platebridge build: hls.js is missing (" + ", ".join(missing) + "). The gateway wheel must "
                "carry the watch page's player: run `npm ci --prefix gateway/web` (or `bash deploy/setup.sh`) "
                "first, then build again."
            )
        dest = Path(self.build_lib) / "gateway" / "static" / "vendor"
        dest.mkdir(parents=True, exist_ok=True)
        for src, name in VENDORED.items():
            shutil.copyfile(src, dest / name)


setup(cmdclass={"build_py": BuildPyWithHlsJs})
