#!/usr/bin/env bash
# PlateBridge capability probes: does this machine really have what the demo, the tests and the
# benchmarks use? Package names are not enough (issue 10: gstreamer1.0-plugins-base was installed,
# but clockoverlay lives in gstreamer1.0-x), so each probe exercises the capability itself and,
# when it is missing, names the Debian package (or npm step) that provides it.
#
# deploy/setup.sh runs this last; run it alone to diagnose a machine: bash deploy/probe.sh
# Exit 0 when everything is there, 1 after listing every missing capability.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
missing=0

ok() { :; }
fail() {  # fail <what> <Debian package or fix>
  printf 'probe: MISSING %s (install Debian package %s)\n' "$1" "$2" >&2
  missing=$((missing + 1))
}
fail_npm() {
  printf 'probe: MISSING %s (%s)\n' "$1" "$2" >&2
  missing=$((missing + 1))
}
has() { command -v "$1" >/dev/null 2>&1; }

# ---- the GStreamer RTSP test camera: PyGObject, the RTSP server typelib and every element
# of its pipeline (the camera's own --check holds the element -> package table)
if [ ! -x /usr/bin/python3 ]; then
  fail "/usr/bin/python3 (Debian's python, for the test camera)" python3
elif ! /usr/bin/python3 -c 'import gi' 2>/dev/null; then
  fail "PyGObject for the test camera" python3-gi
else
  if ! out="$(/usr/bin/python3 "$ROOT/deploy/dev/camera.py" --check 2>&1)"; then
    while IFS= read -r line; do
      case "$line" in
        *"install Debian package "*)
          pkg="${line##*install Debian package }"; pkg="${pkg%%[)]*}"; pkg="${pkg%% *}"
          what="${line#camera: ERROR: }"; what="${what%% not available*}"; what="${what%% (*}"; what="${what%%: install*}"
          fail "$what" "$pkg" ;;
      esac
    done <<<"$out"
  fi
fi
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf ] || fail "DejaVu Sans Mono (camera clock overlay)" fonts-dejavu-core
has gst-inspect-1.0 || fail "gst-inspect-1.0" gstreamer1.0-tools

# ---- ffmpeg: the pod's HLS packaging, clips, transcode, and the tests' synthetic sources
if ! has ffmpeg || ! has ffprobe; then
  fail "ffmpeg and ffprobe" ffmpeg
else
  encoders="$(ffmpeg -hide_banner -encoders 2>/dev/null)"
  formats="$(ffmpeg -hide_banner -formats 2>/dev/null)"
  grep -qE '^ V[.A-Z]{5} libx264 ' <<<"$encoders" || fail "ffmpeg encoder libx264" ffmpeg
  for mux in hls mp4 mpegts framemd5; do
    grep -qE "^ [D ]E +${mux}([ ,]|$)" <<<"$formats" || fail "ffmpeg muxer $mux" ffmpeg
  done
  for demux in rtsp concat lavfi; do
    grep -qE "^ D[E ] +([a-z0-9_]+,)*${demux}([ ,]|$)" <<<"$formats" || fail "ffmpeg demuxer $demux" ffmpeg
  done
fi

# ---- the MQTT broker Frigate publishes to
mosquitto_bin="$(command -v mosquitto || echo /usr/sbin/mosquitto)"
if [ -x "$mosquitto_bin" ]; then
  out="$("$mosquitto_bin" -h 2>&1)"  # -h exits 3 after printing its version
  grep -q '^mosquitto version' <<<"$out" || fail "a working mosquitto" mosquitto
else
  fail "mosquitto broker" mosquitto
fi

# ---- the watch page in headless chromium
runs() { has "$1" && "$@" >/dev/null 2>&1; }  # runs <command> [args]: present and exits 0
runs chromium --version || fail "chromium" chromium
runs chromedriver --version || fail "chromedriver" chromium-driver

# ---- benchmarks and deploy checks: nginx with secure_link and Lua, wrk, caddy, sqlite3, shellcheck, systemd-analyze
if has nginx || [ -x /usr/sbin/nginx ]; then
  nginx_bin="$(command -v nginx || echo /usr/sbin/nginx)"
  "$nginx_bin" -V 2>&1 | grep -q -- '--with-http_secure_link_module' || fail "nginx with secure_link" nginx-extras
  # the gateway's nginx data plane (gateway/nginxconf.py): its Lua grant check must load, with
  # lua-resty-core, and pass its HMAC self-test (nginx -t skips init_by_lua: nginx runs it and
  # exits, 0 or 1, as gateway/dataplane.py does)
  lua_tmp="$(mktemp -d)"
  {
    printf 'load_module /usr/lib/nginx/modules/ndk_http_module.so;\nload_module /usr/lib/nginx/modules/ngx_http_lua_module.so;\n'
    printf 'pid %s/pid;\nevents {}\nhttp {\n' "$lua_tmp"
    printf '  lua_package_path "%s/gateway/lua/?.lua;/usr/share/lua/5.1/?.lua";\n  lua_package_cpath "%s/?.so";\n' "$ROOT" "$lua_tmp"
    printf '  init_by_lua_block { local ok = pcall(function() require("platebridge_grant").self_test() end) os.exit(ok and 0 or 1) }\n}\n'
  } >"$lua_tmp/nginx.conf"
  "$nginx_bin" -q -p "$lua_tmp" -e "$lua_tmp/error.log" -c "$lua_tmp/nginx.conf" >/dev/null 2>&1 \
    || fail "nginx Lua module (the gateway's nginx data plane)" libnginx-mod-http-lua
  rm -rf "$lua_tmp"
else
  fail "nginx with secure_link" nginx-extras
fi
has wrk || fail "wrk" wrk
runs tesseract --version || fail "tesseract OCR (bench/latency.py reads the camera clock)" tesseract-ocr
runs caddy version || fail "caddy" caddy
has sqlite3 || fail "sqlite3 command" sqlite3
has shellcheck || fail "shellcheck" shellcheck
has systemd-analyze || fail "systemd-analyze" systemd

# ---- node + the npm assets: hls.js for the watch page, jose + typescript for the portal example tests
if ! has node || ! has npm; then
  fail "node and npm" "nodejs npm"
fi
[ -f "$ROOT/gateway/web/node_modules/hls.js/dist/hls.min.js" ] ||
  fail_npm "hls.js for the watch page" "run: npm ci --prefix gateway/web"
{ [ -f "$ROOT/tests/node/node_modules/jose/package.json" ] && [ -x "$ROOT/tests/node/node_modules/.bin/tsc" ]; } ||
  fail_npm "jose + typescript for tests/portal" "run: npm ci --prefix tests/node"

if [ "$missing" -gt 0 ]; then
  printf 'probe: %d capabilities missing\n' "$missing" >&2
  exit 1
fi
echo "probe: every capability present"
