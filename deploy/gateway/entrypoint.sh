#!/usr/bin/env bash
# Container entrypoint: tailscaled (userspace networking, unprivileged) beside the gateway.
#
#   1. tailscaled --tun=userspace-networking --socks5-server=$TS_SOCKS5_SERVER (loopback only)
#   2. tailscale up --auth-key=file:… --advertise-tags=tag:gateway --hostname=$TS_HOSTNAME
#      (skipped when the node is already logged in from the state volume)
#   3. platebridge-gateway "$@"  (upstream_proxy + discovery: localapi come from the image's ENV)
# Whichever of tailscaled / gateway exits first stops the other, and the container exits with
# its status, so the platform restarts both together. Secrets are never printed.
#
# Env: TS_AUTHKEY or TS_AUTHKEY_FILE (first start only; an ephemeral, pre-authorised,
# tag:gateway key), TS_HOSTNAME, TS_STATE_DIR, TS_SOCKET, TS_SOCKS5_SERVER, TS_EXTRA_ARGS.
set -euo pipefail

: "${TS_STATE_DIR:=/var/lib/tailscale}"
: "${TS_SOCKET:=/run/tailscale/tailscaled.sock}"
: "${TS_SOCKS5_SERVER:=127.0.0.1:1055}"
: "${TS_HOSTNAME:=platebridge-gateway}"
: "${TS_EXTRA_ARGS:=}"
# Keep the auth key out of every child's environment (tailscaled, the gateway).
authkey="${TS_AUTHKEY:-}"
unset TS_AUTHKEY

log() { printf 'entrypoint: %s\n' "$*" >&2; }

case "$TS_SOCKS5_SERVER" in
  127.*:*|localhost:*|\[::1\]:*) ;;
  *) log "TS_SOCKS5_SERVER must be a loopback address (got $TS_SOCKS5_SERVER)"; exit 2 ;;
esac

mkdir -p "$TS_STATE_DIR" "$(dirname "$TS_SOCKET")"
tailscaled --tun=userspace-networking --socks5-server="$TS_SOCKS5_SERVER" \
  --state="$TS_STATE_DIR/tailscaled.state" --statedir="$TS_STATE_DIR" --socket="$TS_SOCKET" &
ts_pid=$!

gw_pid=""
stop() {
  if [ -n "$gw_pid" ]; then kill -TERM "$gw_pid" 2>/dev/null || true; fi
  kill -TERM "$ts_pid" 2>/dev/null || true
}
trap 'stop' TERM INT

for _ in $(seq 1 100); do
  [ -S "$TS_SOCKET" ] && break
  kill -0 "$ts_pid" 2>/dev/null || { log "tailscaled exited during start-up"; wait "$ts_pid"; exit 1; }
  sleep 0.1
done
[ -S "$TS_SOCKET" ] || { log "tailscaled socket $TS_SOCKET did not appear"; stop; exit 1; }

state="$(tailscale --socket="$TS_SOCKET" status --json 2>/dev/null \
  | python -c 'import json,sys; print(json.load(sys.stdin).get("BackendState",""))' 2>/dev/null || true)"
if [ "$state" = "Running" ]; then
  log "tailnet: already logged in (state in $TS_STATE_DIR)"
else
  keyfile=""
  cleanup_key=0
  if [ -n "${TS_AUTHKEY_FILE:-}" ]; then
    keyfile="$TS_AUTHKEY_FILE"
  elif [ -n "$authkey" ]; then
    keyfile="$(mktemp "$TS_STATE_DIR/.authkey.XXXXXX")"   # 0600; keeps the key out of argv
    printf '%s' "$authkey" >"$keyfile"
    cleanup_key=1
  fi
  up=(tailscale --socket="$TS_SOCKET" up --advertise-tags=tag:gateway --hostname="$TS_HOSTNAME")
  [ -n "$keyfile" ] && up+=(--auth-key="file:$keyfile")
  # shellcheck disable=SC2206 # TS_EXTRA_ARGS is a deliberate word list
  [ -n "$TS_EXTRA_ARGS" ] && up+=($TS_EXTRA_ARGS)
  log "tailnet: tailscale up --auth-key=<redacted> --advertise-tags=tag:gateway --hostname=$TS_HOSTNAME"
  rc=0
  "${up[@]}" || rc=$?
  [ "$cleanup_key" -eq 1 ] && rm -f "$keyfile"
  if [ "$rc" -ne 0 ]; then
    log "tailscale up failed (exit $rc): check TS_AUTHKEY (tag:gateway, not expired)"
    stop; exit 1
  fi
fi

platebridge-gateway "$@" &
gw_pid=$!
rc=0
wait -n "$ts_pid" "$gw_pid" || rc=$?
# One of them ended (or we were signalled): stop the other and report.
stop
wait "$gw_pid" 2>/dev/null || true
wait "$ts_pid" 2>/dev/null || true
exit "$rc"
