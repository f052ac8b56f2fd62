#!/usr/bin/env bash
# PlateBridge one-step install (Debian 12 / bookworm, Python 3.11).
#
# Idempotent and fast on re-runs:
#   1. apt packages  - only if one of them is missing (apt-get update + install)
#   2. .venv         - created with python3.11 if missing; `pip install -e '.[test]'`
#                      only when pyproject.toml is newer than .venv/.platebridge-installed
#   3. npm assets    - `npm ci` in gateway/web only when hls.min.js is missing
#   4. npm test tools - `npm ci` in tests/node (jose, typescript) only when jose or tsc is missing
#   5. probes        - deploy/probe.sh: every capability (GStreamer elements, ffmpeg muxers,
#                      mosquitto, chromium, nginx secure_link and Lua, …); a missing one fails setup,
#                      naming the Debian package that provides it
#
# Usage (from anywhere): bash deploy/setup.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

say() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: ERROR: %s\n' "$*" >&2; exit 1; }
trap 'rc=$?; [ $rc -eq 0 ] || printf "setup: FAILED (exit %s) at line %s: %s\n" "$rc" "$LINENO" "$BASH_COMMAND" >&2' EXIT

# ---------------------------------------------------------------- 1. apt
APT_PACKAGES=(
  ffmpeg mosquitto python3-gi gir1.2-gst-rtsp-server-1.0
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly
  gstreamer1.0-x gstreamer1.0-tools chromium chromium-driver nginx-extras libnginx-mod-http-lua wrk sqlite3
  python3 python3-venv nodejs npm fonts-dejavu-core ca-certificates
  systemd shellcheck caddy tesseract-ocr
)

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
  fi
fi

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  # NodeSource's "nodejs" package bundles npm and conflicts with Debian's
  # "npm" package: a working npm command is good enough.
  if [ "$pkg" = npm ] && command -v npm >/dev/null 2>&1; then
    continue
  fi
  status="$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)"
  if [ "$status" != "install ok installed" ]; then
    missing+=("$pkg")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  say "apt: all ${#APT_PACKAGES[@]} packages present"
else
  say "apt: missing: ${missing[*]}"
  if [ "$(id -u)" -ne 0 ] && [ "${#SUDO[@]}" -eq 0 ]; then
    die "not root and sudo is not available; install as root: apt-get install ${missing[*]}"
  fi
  # Install the full list (apt skips what is already there); keeps versions coherent.
  to_install=()
  for pkg in "${APT_PACKAGES[@]}"; do
    if [ "$pkg" = npm ] && command -v npm >/dev/null 2>&1; then continue; fi
    to_install+=("$pkg")
  done
  say "apt: apt-get update"
  "${SUDO[@]}" apt-get update -qq || die "apt-get update failed"
  say "apt: installing ${#to_install[@]} packages (this can take a few minutes)"
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${to_install[@]}" \
    || die "apt-get install failed"
  say "apt: done"
fi

# ---------------------------------------------------------------- 2. Python venv
VENV="$ROOT/.venv"
STAMP="$VENV/.platebridge-installed"

venv_ok() {
  [ -x "$VENV/bin/python" ] &&
    "$VENV/bin/python" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' \
      >/dev/null 2>&1
}

if ! venv_ok; then
  PY=""
  for cand in python3.11 /usr/bin/python3.11; do
    if command -v "$cand" >/dev/null 2>&1 &&
      "$cand" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' >/dev/null 2>&1; then
      PY="$cand"
      break
    fi
  done
  [ -n "$PY" ] || die "python3.11 not found (Debian 12: apt-get install python3.11 python3-venv)"
  if [ -e "$VENV" ]; then
    say "venv: $VENV is broken or not Python 3.11; recreating"
    "$PY" -m venv --clear "$VENV" || die "cannot recreate venv with $PY"
  else
    say "venv: creating $VENV with $PY"
    "$PY" -m venv "$VENV" || die "cannot create venv with $PY (is python3-venv installed?)"
  fi
  rm -f "$STAMP"
fi

need_pip=0
if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ]; then
  need_pip=1
fi
for script in platebridge-pod platebridge-gateway; do
  [ -x "$VENV/bin/$script" ] || need_pip=1
done

if [ "$need_pip" -eq 1 ]; then
  say "pip: installing -e '.[test]' into .venv"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$ROOT[test]" \
    || die "pip install -e '.[test]' failed"
  touch "$STAMP"
  say "pip: done"
else
  say "pip: .venv up to date (stamp newer than pyproject.toml)"
fi

# ---------------------------------------------------------------- 3. npm assets
WEB="$ROOT/gateway/web"
HLS_JS="$WEB/node_modules/hls.js/dist/hls.min.js"
[ -f "$WEB/package.json" ] || die "missing $WEB/package.json"

if [ -f "$HLS_JS" ]; then
  say "npm: hls.js present"
else
  command -v npm >/dev/null 2>&1 || die "npm not found (apt-get install nodejs npm)"
  if [ -f "$WEB/package-lock.json" ]; then
    say "npm: npm ci (gateway/web)"
    npm ci --prefix "$WEB" --no-audit --no-fund --loglevel=error || die "npm ci failed"
  else
    say "npm: npm install (gateway/web, writing package-lock.json)"
    npm install --prefix "$WEB" --no-audit --no-fund --loglevel=error || die "npm install failed"
  fi
  [ -f "$HLS_JS" ] || die "npm finished but $HLS_JS is missing"
  say "npm: done"
fi

# ---------------------------------------------------------------- 4. npm test toolchain
# jose + typescript for tests/portal (the portal's stream-token example run under node).
NODE_TOOLS="$ROOT/tests/node"
JOSE="$NODE_TOOLS/node_modules/jose/package.json"
[ -f "$NODE_TOOLS/package.json" ] || die "missing $NODE_TOOLS/package.json"

if [ -f "$JOSE" ] && [ -x "$NODE_TOOLS/node_modules/.bin/tsc" ]; then
  say "npm: test toolchain (jose, typescript) present"
else
  command -v npm >/dev/null 2>&1 || die "npm not found (apt-get install nodejs npm)"
  [ -f "$NODE_TOOLS/package-lock.json" ] || die "missing $NODE_TOOLS/package-lock.json"
  say "npm: npm ci (tests/node)"
  npm ci --prefix "$NODE_TOOLS" --no-audit --no-fund --loglevel=error || die "npm ci (tests/node) failed"
  [ -f "$JOSE" ] || die "npm finished but $JOSE is missing"
  say "npm: done"
fi

# ---------------------------------------------------------------- 5. capability probes
# Package names are not proof (issue 10): probe what the demo, tests and benchmarks really use.
bash "$ROOT/deploy/probe.sh" >/dev/null || die "capabilities missing (above) after installing APT_PACKAGES: install each named package (apt-get install <package>); it belongs in APT_PACKAGES"
say "probes: every capability present"

say "OK"
