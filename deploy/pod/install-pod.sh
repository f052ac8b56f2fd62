#!/usr/bin/env bash
# PlateBridge pod installer (Debian 12 / Raspberry Pi OS bookworm). Idempotent: safe to re-run.
#
# Run as root, from a checkout of the repository (git clone or release tarball) or as a lone
# copy fetched from the portal (the PlateBridge POD connection guide's flow) with the agent's
# wheel or package index given as --source:
#   curl -o install-pod.sh https://your-portal.vercel.app/install-pod.sh; chmod +x install-pod.sh
#   sudo ./install-pod.sh --source https://your-portal.vercel.app/platebridge-0.1.0-py3-none-any.whl
#   sudo deploy/pod/install-pod.sh                       # prompts for what it needs
#   sudo deploy/pod/install-pod.sh --secrets-file /root/pod.secrets --gateway-public-key gateway.pub \
#        --portal-url https://portal.example.com --pod-id main-gate-pod …
#   deploy/pod/install-pod.sh --dry-run …                # print every action, change nothing
#
# Steps (each one skipped when already done):
#   1. apt: ffmpeg python3.11 python3-venv (+ curl ca-certificates when tailscale is installed)
#   2. system user/group `platebridge` (no login, no home)
#   3. venv /opt/platebridge/venv with the agent (pip install of --source: a wheel URL, a package
#      index URL, a wheel file or a repository directory; default: the checkout this script is in)
#   4. dirs /var/lib/platebridge (0750), …/hls (0750), …/recordings (0700), owned by platebridge
#   5. /etc/platebridge/config.yaml, mode 0600, owned by platebridge (never overwritten
#      without --force-config; the old one is then kept as config.yaml.bak-<time>, 0600)
#   6. tailscale from Tailscale's own apt repository, if missing (--skip-tailscale-install)
#   7. tailscale up --auth-key=… --advertise-tags=tag:pod --hostname=<pod_id> (--skip-tailscale-up)
#   8. /etc/systemd/system/platebridge-pod.service, daemon-reload, enable, (re)start
#
# Secrets (pod_api_key, the tailscale auth key, RTSP credentials, a legacy stream_secret) come
# only from a secrets file of mode 0600 (--secrets-file) or the prompt: never from flags or
# environment variables, which other users see in `ps` (sudo's own argv) and in shell history.
# They are never printed. The pod gets the gateway's Ed25519 *public* key (--gateway-public-key):
# it can verify the gateway's tokens but mint none. Exit codes: 0 ok, 1 a step failed, 2 bad
# usage or an invalid value.
set -euo pipefail
umask 022

PROG="install-pod.sh"
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# ------------------------------------------------------------------ defaults
ROOT=""
DRY_RUN=0
NO_SYSTEM=0
SKIP_TS_INSTALL=0
SKIP_TS_UP=0
FORCE_CONFIG=0
NO_START=0
ALLOW_WEAK_SECRET=0
ASSUME_YES=0
# A portal that serves this script may set its wheel (or index) URL here, so the guide's
# `curl -o install-pod.sh …; sudo ./install-pod.sh` needs no --source.
DEFAULT_SOURCE=""
SOURCE="${PLATEBRIDGE_SOURCE:-$DEFAULT_SOURCE}"

PORTAL_URL="${PLATEBRIDGE_PORTAL_URL:-}"
POD_ID="${PLATEBRIDGE_POD_ID:-}"
SITE_ID="${PLATEBRIDGE_SITE_ID:-}"
COMPANY_ID="${PLATEBRIDGE_COMPANY_ID:-}"
CAMERA_ID="${PLATEBRIDGE_CAMERA_ID:-}"
FRIGATE_CAMERA="${PLATEBRIDGE_FRIGATE_CAMERA:-}"
TIMEZONE="${PLATEBRIDGE_TIMEZONE:-}"
SECRETS_FILE="${PLATEBRIDGE_SECRETS_FILE:-}"
GATEWAY_PUBLIC_KEY="${PLATEBRIDGE_GATEWAY_PUBLIC_KEY:-}"
GATEWAY_KEY_ID="${PLATEBRIDGE_GATEWAY_KEY_ID:-default}"
# secrets: from --secrets-file or the prompt only
POD_API_KEY=""
CAMERA_RTSP_URL=""
STREAM_SECRET=""
TS_AUTH_KEY=""
SECRET_ENV=(PLATEBRIDGE_POD_API_KEY PLATEBRIDGE_CAMERA_RTSP_URL POD_STREAM_SECRET TS_AUTHKEY)

SERVICE_USER="platebridge"
OPT_DIR="/opt/platebridge"
VENV_DIR="$OPT_DIR/venv"
ETC_DIR="/etc/platebridge"
CONFIG_PATH="$ETC_DIR/config.yaml"
STATE_DIR="/var/lib/platebridge"
HLS_DIR="$STATE_DIR/hls"
REC_DIR="$STATE_DIR/recordings"
UNIT_NAME="platebridge-pod.service"
UNIT_PATH="/etc/systemd/system/$UNIT_NAME"
UNIT_SRC="$SCRIPT_DIR/$UNIT_NAME"
APT_PACKAGES=(ffmpeg python3.11 python3-venv)

usage() {
  cat <<'EOF'
Usage: install-pod.sh [options]

Installs the PlateBridge pod agent: apt deps, user `platebridge`, venv in /opt/platebridge,
/var/lib/platebridge, /etc/platebridge/config.yaml (0600), tailscale, the systemd unit.
Idempotent: re-running keeps an existing config.yaml (unless --force-config).

Config values (flag, or env variable, or asked interactively when stdin is a terminal):
  --portal-url URL          PLATEBRIDGE_PORTAL_URL       https://your-portal.vercel.app
  --pod-id NAME             PLATEBRIDGE_POD_ID           DNS label (a-z 0-9 -), also the tailnet host name
  --site-id ID              PLATEBRIDGE_SITE_ID
  --company-id ID           PLATEBRIDGE_COMPANY_ID
  --camera-id ID            PLATEBRIDGE_CAMERA_ID        e.g. gate-camera-1
  --camera-rtsp-url URL     (without user:password)      rtsp://192.168.1.100:554/stream; with credentials:
                                                         the secrets file or the prompt
  --frigate-camera NAME     PLATEBRIDGE_FRIGATE_CAMERA   the camera's name in Frigate (default: camera id)
  --timezone ZONE           PLATEBRIDGE_TIMEZONE         the site's IANA zone, e.g. America/New_York: plain-date
                                                         whitelist bounds are its days (default: the system's)
  --gateway-public-key FILE PLATEBRIDGE_GATEWAY_PUBLIC_KEY  the gateway's Ed25519 public key (PEM; on the
                                                         gateway: openssl pkey -in <signing key> -pubout)
  --gateway-key-id KID      PLATEBRIDGE_GATEWAY_KEY_ID   its key id, the gateway's pod_signing_key_id (default)

Secrets never come from the command line or the environment (both show in `ps`). Answer the
prompts, or pass --secrets-file FILE: mode 0600, one KEY=value per line (parsed, never sourced):
  PLATEBRIDGE_POD_API_KEY=pbk_…            from the portal's /pods page
  PLATEBRIDGE_CAMERA_RTSP_URL=rtsp://user:pass@192.168.1.100:554/stream
  TS_AUTHKEY=tskey-auth-…                  tag:pod auth key for `tailscale up`
  POD_STREAM_SECRET=…                      legacy only: the connection guide's shared secret (a stolen
                                           pod can mint tokens with it; prefer --gateway-public-key)

Install options:
  --source URL|PATH         what to pip install (PLATEBRIDGE_SOURCE): a wheel URL
                            (https://…/platebridge-0.1.0-py3-none-any.whl), a package index
                            URL (https://…/simple/: pip install --index-url URL platebridge),
                            a wheel file or a repository directory; default: the checkout this
                            script is in (a lone copy of this script needs --source)
  --skip-tailscale-install  do not install tailscale (it must already be there to join)
  --skip-tailscale-up       do not run `tailscale up`
  --force-config            rewrite an existing config.yaml (the old one is kept as a .bak)
  --no-start                enable the unit but do not (re)start it
  --secrets-file FILE       the secrets above, from a 0600 file (PLATEBRIDGE_SECRETS_FILE)
  --allow-weak-secret       accept a legacy stream secret shorter than 32 bytes (not recommended)
  --yes                     never prompt; fail on a missing value

Testing options:
  --dry-run                 print every action (secrets redacted) and change nothing
  --root DIR                prefix every path with DIR (for tests and image building)
  --no-system               only write files under --root (dirs, config, unit, and the venv
                            when --source is given): no apt, user, tailscale or systemctl
  -h, --help                this help

Exit codes: 0 ok, 1 a step failed, 2 bad usage or an invalid value.
EOF
}

say() { printf '%s: %s\n' "$PROG" "$*"; }
warn() { printf '%s: WARNING: %s\n' "$PROG" "$*" >&2; }
die() { printf '%s: ERROR: %s\n' "$PROG" "$*" >&2; exit 1; }
usage_error() { printf '%s: %s\n' "$PROG" "$*" >&2; printf "Try '%s --help'.\n" "$PROG" >&2; exit 2; }

need_arg() { [ "$#" -ge 2 ] || usage_error "option $1 needs a value"; }

while [ "$#" -gt 0 ]; do
  opt="$1"
  val=""
  case "$opt" in
    --*=*) val="${opt#*=}"; opt="${opt%%=*}"; set -- "$opt" "$val" "${@:2}" ;;
  esac
  case "$opt" in
    -h|--help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1 ;;
    --no-system) NO_SYSTEM=1 ;;
    --skip-tailscale-install) SKIP_TS_INSTALL=1 ;;
    --skip-tailscale-up) SKIP_TS_UP=1 ;;
    --force-config) FORCE_CONFIG=1 ;;
    --no-start) NO_START=1 ;;
    --allow-weak-secret) ALLOW_WEAK_SECRET=1 ;;
    --yes|-y) ASSUME_YES=1 ;;
    --root) need_arg "$@"; ROOT="$2"; shift ;;
    --source) need_arg "$@"; SOURCE="$2"; shift ;;
    --portal-url) need_arg "$@"; PORTAL_URL="$2"; shift ;;
    --pod-api-key|--stream-secret|--tailscale-auth-key|--auth-key)
      usage_error "$opt: secrets are never taken on the command line (other users see it in ps); put it in a mode 0600 file for --secrets-file, or answer the prompt" ;;
    --secrets-file) need_arg "$@"; SECRETS_FILE="$2"; shift ;;
    --gateway-public-key) need_arg "$@"; GATEWAY_PUBLIC_KEY="$2"; shift ;;
    --gateway-key-id) need_arg "$@"; GATEWAY_KEY_ID="$2"; shift ;;
    --pod-id) need_arg "$@"; POD_ID="$2"; shift ;;
    --site-id) need_arg "$@"; SITE_ID="$2"; shift ;;
    --company-id) need_arg "$@"; COMPANY_ID="$2"; shift ;;
    --camera-id) need_arg "$@"; CAMERA_ID="$2"; shift ;;
    --camera-rtsp-url) need_arg "$@"; CAMERA_RTSP_URL="$2"; shift
      [[ "$CAMERA_RTSP_URL" != *@* ]] || usage_error "--camera-rtsp-url: a URL with user:password is a secret; put it in the --secrets-file (PLATEBRIDGE_CAMERA_RTSP_URL) or answer the prompt" ;;
    --frigate-camera) need_arg "$@"; FRIGATE_CAMERA="$2"; shift ;;
    --timezone) need_arg "$@"; TIMEZONE="$2"; shift ;;
    *) usage_error "unknown option: $opt" ;;
  esac
  shift
done

for var in "${SECRET_ENV[@]}"; do
  [ -z "${!var:-}" ] || usage_error "\$$var is set: secrets are never taken from the environment (sudo VAR=... $PROG puts them in sudo's argv, visible in ps); put it in a mode 0600 file for --secrets-file, or answer the prompt"
done

# read_secrets FILE: KEY=value lines (blank lines and # comments allowed; optional "…" or '…'
# around the value). The file is parsed, never sourced, and must not be readable by others.
read_secrets() {
  local file="$1" mode line key value n=0
  [ -f "$file" ] || usage_error "--secrets-file $file: not a file"
  mode="$(stat -c '%a' "$file")"
  if (( (8#$mode & 8#077) != 0 )); then
    usage_error "--secrets-file $file: mode $mode lets other users read it; chmod 600 $file"
  fi
  while IFS= read -r line || [ -n "$line" ]; do
    n=$((n + 1))
    line="${line%$'\r'}"
    [[ "$line" =~ ^[[:space:]]*(#.*)?$ ]] && continue
    [[ "$line" =~ ^([A-Z_]+)=(.*)$ ]] || usage_error "--secrets-file $file line $n: not KEY=value"
    key="${BASH_REMATCH[1]}"
    value="${BASH_REMATCH[2]}"
    if [[ "$value" =~ ^\"(.*)\"$ ]] || [[ "$value" =~ ^\'(.*)\'$ ]]; then value="${BASH_REMATCH[1]}"; fi
    case "$key" in
      PLATEBRIDGE_POD_API_KEY) POD_API_KEY="$value" ;;
      PLATEBRIDGE_CAMERA_RTSP_URL)
        [ -z "$CAMERA_RTSP_URL" ] || usage_error "the camera RTSP URL is given twice (--camera-rtsp-url and --secrets-file)"
        CAMERA_RTSP_URL="$value" ;;
      POD_STREAM_SECRET) STREAM_SECRET="$value" ;;
      TS_AUTHKEY) TS_AUTH_KEY="$value" ;;
      *) usage_error "--secrets-file $file line $n: unknown key $key (PLATEBRIDGE_POD_API_KEY, PLATEBRIDGE_CAMERA_RTSP_URL, TS_AUTHKEY, POD_STREAM_SECRET)" ;;
    esac
  done <"$file"
}
[ -z "$SECRETS_FILE" ] || read_secrets "$SECRETS_FILE"

if [ -n "$ROOT" ]; then
  [ "$ROOT" != "/" ] || ROOT=""
fi
if [ -n "$ROOT" ]; then
  case "$ROOT" in /*) ;; *) ROOT="$(pwd)/$ROOT" ;; esac
  ROOT="${ROOT%/}"
fi
if [ "$NO_SYSTEM" -eq 1 ]; then
  [ -n "$ROOT" ] || usage_error "--no-system writes only under --root DIR; give --root"
  SKIP_TS_INSTALL=1
  SKIP_TS_UP=1
fi
IS_ROOT=0
[ "$(id -u)" -eq 0 ] && IS_ROOT=1
if [ "$DRY_RUN" -eq 0 ] && [ "$NO_SYSTEM" -eq 0 ] && [ "$IS_ROOT" -eq 0 ]; then
  die "run as root (sudo $0 …), or use --dry-run / --no-system --root DIR"
fi

# r PATH: the path under --root
r() { printf '%s%s' "$ROOT" "$1"; }

# ------------------------------------------------------------------ action helpers
# Every change goes through run/write_file/make_dir, which only print under --dry-run.
# Arguments shown by run are passed through redact_text.
SECRETS=()
redact_text() {
  local s="$1" x
  for x in "${SECRETS[@]+"${SECRETS[@]}"}"; do
    [ -n "$x" ] && s="${s//"$x"/<redacted>}"
  done
  printf '%s' "$s"
}
show_cmd() {
  local out="" a
  for a in "$@"; do out+=" $(printf '%q' "$(redact_text "$a")")"; done
  printf '%s' "${out# }"
}
run() {
  if [ "$DRY_RUN" -eq 1 ]; then
    printf '[dry-run] would run: %s\n' "$(show_cmd "$@")"
    return 0
  fi
  say "+ $(show_cmd "$@")"
  "$@"
}
# make_dir PATH MODE [OWNER]: create or fix a directory (under --root).
make_dir() {
  local path="$1" mode="$2" owner="${3:-}" args
  args=(-d -m "$mode")
  if [ -n "$owner" ] && [ "$NO_SYSTEM" -eq 0 ]; then args+=(-o "${owner%%:*}" -g "${owner##*:}"); fi
  if [ "$DRY_RUN" -eq 1 ]; then
    printf '[dry-run] would create directory %s (mode %s%s)\n' "$(r "$path")" "$mode" "${owner:+, owner $owner}"
    return 0
  fi
  if [ -n "$owner" ] && [ "$NO_SYSTEM" -eq 1 ]; then owner="owner $owner not set: --no-system"; fi
  say "dir $(r "$path") ($mode${owner:+, $owner})"
  install "${args[@]}" "$(r "$path")"
}
# write_file PATH MODE OWNER DESCRIPTION < content: atomic write (temp file + rename).
write_file() {
  local path="$1" mode="$2" owner="$3" what="$4" dest tmp
  dest="$(r "$path")"
  if [ "$DRY_RUN" -eq 1 ]; then
    cat >/dev/null
    printf '[dry-run] would write %s (mode %s%s): %s\n' "$dest" "$mode" "${owner:+, owner $owner}" "$what"
    return 0
  fi
  tmp="$(mktemp "$(dirname "$dest")/.$(basename "$dest").XXXXXX")"
  chmod "$mode" "$tmp"
  if [ -n "$owner" ] && [ "$NO_SYSTEM" -eq 0 ]; then chown "$owner" "$tmp"; fi
  cat >"$tmp"
  mv -f "$tmp" "$dest"
  if [ -n "$owner" ] && [ "$NO_SYSTEM" -eq 1 ]; then owner="owner $owner not set: --no-system"; fi
  say "wrote $dest ($mode${owner:+, $owner}): $what"
}

# unit_text: the systemd unit — deploy/pod/platebridge-pod.service next to this script in a
# checkout, else this copy of it (a lone install-pod.sh; tests/deploy keeps the two identical).
unit_text() {
  if [ -f "$UNIT_SRC" ]; then cat "$UNIT_SRC"; else embedded_unit; fi
}
embedded_unit() {
  cat <<'PLATEBRIDGE_UNIT'
# PlateBridge pod agent — installed by deploy/pod/install-pod.sh to
# /etc/systemd/system/platebridge-pod.service. Logs: journalctl -u platebridge-pod -f
#
# The agent serves HLS only on the pod's tailnet address, so it starts after
# tailscaled (stream_bind: auto waits for the tailnet IP; plate decisions run
# meanwhile). ffmpeg children live in the unit's cgroup and die with it.
# It is ordered after time-sync.target: gateway tokens are checked against this clock
# (a Pi has no RTC). Ordered only, not pulled in, as systemd.special(7) asks of time
# consumers; where systemd-time-wait-sync.service is enabled the agent waits for the
# first NTP sync, elsewhere it starts at once, so gate decisions never wait for the
# network. The pod tolerates max_clock_skew (30 s) and `platebridge-pod check` reports
# the skew against the portal's clock.
# Local changes: `systemctl edit platebridge-pod` (a drop-in), not this file;
# a recordings_dir/hls_dir/state_dir outside /var/lib/platebridge needs its own
# ReadWritePaths= in that drop-in.

[Unit]
Description=PlateBridge pod agent (gate camera, plate decisions, tailnet HLS)
Documentation=file:///opt/platebridge/README.md
Wants=network-online.target tailscaled.service
After=network-online.target tailscaled.service time-sync.target
StartLimitIntervalSec=0

[Service]
Type=exec
User=platebridge
Group=platebridge
ExecStart=/opt/platebridge/venv/bin/platebridge-pod run --config /etc/platebridge/config.yaml
# `systemctl reload platebridge-pod`: re-read the config; a new pod_api_key is used at once and
# detections/clips parked because the portal refused the old key are re-queued
ExecReload=/bin/kill -HUP $MAINPID
Environment=PYTHONUNBUFFERED=1
Restart=always
RestartSec=5s
# SIGTERM to the whole cgroup (agent + ffmpeg); 143 = terminated by SIGTERM, a clean stop.
KillMode=control-group
TimeoutStopSec=20s
SuccessExitStatus=143
StandardOutput=journal
StandardError=journal
SyslogIdentifier=platebridge-pod

# --- state: whitelist cache, outbox, HLS window, clips (all under /var/lib/platebridge)
StateDirectory=platebridge
StateDirectoryMode=0750
ReadWritePaths=/var/lib/platebridge
UMask=0077

# --- hardening (systemd-analyze security platebridge-pod)
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
NoNewPrivileges=yes
CapabilityBoundingSet=
AmbientCapabilities=
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
RemoveIPC=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged
SystemCallErrorNumber=EPERM
# No MemoryDenyWriteExecute=: ffmpeg's codec libraries may need it off when `transcode: h264` is used.

[Install]
WantedBy=multi-user.target
PLATEBRIDGE_UNIT
}

pkg_installed() { [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" = "install ok installed" ]; }
interactive() { [ "$ASSUME_YES" -eq 0 ] && [ -t 0 ]; }

# ------------------------------------------------------------------ validation
is_dns_label() { [[ "$1" =~ ^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$ ]]; }
is_camera_id() { [[ "$1" =~ ^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$ ]] && [[ "$1" != *..* ]]; }
is_http_url() { [[ "$1" =~ ^https?://[^[:space:]/]+ ]]; }
# an IANA zone name (Area/Location, UTC …) that this host's zoneinfo has as a TZif file
# (not leapseconds, zone.tab …); not localtime/posixrules/Factory (the host's or no zone) or
# right/… (leap-second clocks, not civil time)
is_timezone() {
  [[ "$1" =~ ^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+){0,2}$ ]] || return 1
  case "$1" in localtime|posixrules|Factory|right/*) return 1 ;; esac
  [ -f "/usr/share/zoneinfo/$1" ] && [ "$(head -c 4 "/usr/share/zoneinfo/$1" 2>/dev/null)" = "TZif" ]
}
is_rtsp_url() { [[ "$1" =~ ^rtsps?://[^[:space:]]+$ ]]; }
has_control_chars() { [[ "$1" =~ [[:cntrl:]] ]]; }

# invalid NAME MESSAGE: exit 2 (the value itself is never printed; it may be a secret)
invalid() { printf '%s: invalid %s: %s\n' "$PROG" "$1" "$2" >&2; exit 2; }

# ask VAR "question" secret(0/1): prompt when interactive and VAR is empty.
ask() {
  local var="$1" question="$2" secret="$3" answer=""
  [ -z "${!var}" ] || return 0
  interactive || return 0
  if [ "$secret" -eq 1 ]; then
    read -r -s -p "$question: " answer </dev/tty || true
    printf '\n' >&2
  else
    read -r -p "$question: " answer </dev/tty || true
  fi
  printf -v "$var" '%s' "$answer"
}

CONFIG_EXISTS=0
[ -e "$(r "$CONFIG_PATH")" ] && CONFIG_EXISTS=1
WRITE_CONFIG=1
if [ "$CONFIG_EXISTS" -eq 1 ] && [ "$FORCE_CONFIG" -eq 0 ]; then
  WRITE_CONFIG=0
fi

# An existing config gives pod_id (the tailnet host name) when it is not given.
if [ "$WRITE_CONFIG" -eq 0 ] && [ -z "$POD_ID" ] && [ -r "$(r "$CONFIG_PATH")" ]; then
  POD_ID="$(sed -n -E 's/^pod_id:[[:space:]]*"?([a-z0-9-]+)"?[[:space:]]*(#.*)?$/\1/p' "$(r "$CONFIG_PATH")" | head -n1)"
fi

if [ "$WRITE_CONFIG" -eq 1 ]; then
  ask PORTAL_URL "Portal URL (https://your-portal.vercel.app)" 0
  ask POD_API_KEY "Pod API key (from the portal's /pods page; not echoed)" 1
  ask POD_ID "Pod id (DNS label, e.g. main-gate-pod; also the tailnet host name)" 0
  ask SITE_ID "Site id" 0
  ask COMPANY_ID "Company id" 0
  ask CAMERA_ID "Camera id (e.g. gate-camera-1)" 0
  ask CAMERA_RTSP_URL "Camera RTSP URL (rtsp://user:pass@192.168.1.100:554/stream; not echoed)" 1
  if [ -z "$FRIGATE_CAMERA" ] && interactive; then
    read -r -p "Camera name in Frigate [$CAMERA_ID]: " FRIGATE_CAMERA </dev/tty || true
  fi
  if [ -z "$TIMEZONE" ] && interactive; then
    read -r -p "Site time zone, IANA (e.g. America/New_York; empty: this system's, $(readlink /etc/localtime 2>/dev/null | sed 's|.*/zoneinfo/||')): " TIMEZONE </dev/tty || true
  fi
  if [ -z "$GATEWAY_PUBLIC_KEY" ] && [ -z "$STREAM_SECRET" ] && interactive; then
    read -r -p "Path of the gateway's public key (PEM; empty: legacy shared stream secret): " GATEWAY_PUBLIC_KEY </dev/tty || true
  fi
  if [ -z "$GATEWAY_PUBLIC_KEY" ]; then
    ask STREAM_SECRET "Legacy stream secret (the portal's POD_STREAM_SECRET, >= 32 bytes; not echoed)" 1
  fi
fi
if [ "$SKIP_TS_UP" -eq 0 ]; then
  ask TS_AUTH_KEY "Tailscale auth key for tag:pod (tskey-auth-…; not echoed)" 1
fi

SECRETS=("$POD_API_KEY" "$STREAM_SECRET" "$TS_AUTH_KEY")
# The RTSP URL may carry user:password.
SECRETS+=("$CAMERA_RTSP_URL")

missing=()
if [ "$WRITE_CONFIG" -eq 1 ]; then
  [ -n "$PORTAL_URL" ] || missing+=(--portal-url)
  [ -n "$POD_API_KEY" ] || missing+=("PLATEBRIDGE_POD_API_KEY (secrets file)")
  [ -n "$POD_ID" ] || missing+=(--pod-id)
  [ -n "$SITE_ID" ] || missing+=(--site-id)
  [ -n "$COMPANY_ID" ] || missing+=(--company-id)
  [ -n "$CAMERA_ID" ] || missing+=(--camera-id)
  [ -n "$CAMERA_RTSP_URL" ] || missing+=("--camera-rtsp-url (or PLATEBRIDGE_CAMERA_RTSP_URL in the secrets file)")
  [ -n "$GATEWAY_PUBLIC_KEY$STREAM_SECRET" ] || missing+=("--gateway-public-key (legacy: POD_STREAM_SECRET in the secrets file)")
fi
if [ "$SKIP_TS_UP" -eq 0 ]; then
  [ -n "$POD_ID" ] || missing+=(--pod-id)
  [ -n "$TS_AUTH_KEY" ] || missing+=("TS_AUTHKEY (secrets file; or --skip-tailscale-up)")
fi
if [ "${#missing[@]}" -gt 0 ]; then
  joined="$(printf '%s, ' "${missing[@]}")"
  printf '%s: missing value(s): %s\n' "$PROG" "${joined%, }" >&2
  [ -t 0 ] || printf '%s: (stdin is not a terminal, so nothing was asked; see --help)\n' "$PROG" >&2
  exit 2
fi

if [ -n "$POD_ID" ] && ! is_dns_label "$POD_ID"; then
  invalid "--pod-id '$POD_ID'" "must be a DNS label: 1-63 chars of a-z, 0-9 and '-', not starting or ending with '-' (it is the pod's tailnet host name)"
fi
if [ "$WRITE_CONFIG" -eq 1 ]; then
  for pair in "--portal-url:$PORTAL_URL" "PLATEBRIDGE_POD_API_KEY:$POD_API_KEY" "--site-id:$SITE_ID" \
              "--company-id:$COMPANY_ID" "--camera-id:$CAMERA_ID" "camera RTSP URL:$CAMERA_RTSP_URL" \
              "--frigate-camera:$FRIGATE_CAMERA" "--timezone:$TIMEZONE" "POD_STREAM_SECRET:$STREAM_SECRET"; do
    has_control_chars "${pair#*:}" && invalid "${pair%%:*}" "must not contain control characters or newlines"
  done
  is_http_url "$PORTAL_URL" || invalid "--portal-url" "must start with http:// or https://"
  is_camera_id "$CAMERA_ID" || invalid "--camera-id '$CAMERA_ID'" "must be 1-64 chars of A-Za-z0-9_.- starting with a letter or digit"
  is_rtsp_url "$CAMERA_RTSP_URL" || invalid "camera RTSP URL" "must be an rtsp:// or rtsps:// URL without spaces"
  if [ -n "$FRIGATE_CAMERA" ] && [[ ! "$FRIGATE_CAMERA" =~ ^[A-Za-z0-9_.-]+$ ]]; then
    invalid "--frigate-camera '$FRIGATE_CAMERA'" "must be the camera's name in Frigate (A-Za-z0-9_.-)"
  fi
  if [ -n "$TIMEZONE" ] && ! is_timezone "$TIMEZONE"; then
    invalid "--timezone '$TIMEZONE'" "must be an IANA time zone name in /usr/share/zoneinfo, e.g. America/New_York"
  fi
  if [ -n "$STREAM_SECRET" ]; then
    warn "POD_STREAM_SECRET: legacy key layout, a stolen pod can mint tokens with it; prefer --gateway-public-key"
    secret_len="$(printf '%s' "$STREAM_SECRET" | LC_ALL=C wc -c | tr -d ' ')"
    if [ "$secret_len" -lt 32 ]; then
      if [ "$ALLOW_WEAK_SECRET" -eq 1 ]; then
        warn "stream secret is $secret_len bytes; use >= 32 random bytes (openssl rand -base64 48)"
      else
        invalid "POD_STREAM_SECRET" "is $secret_len bytes; use >= 32 random bytes (openssl rand -base64 48), shared with portal and gateway (--allow-weak-secret to accept it)"
      fi
    fi
  fi
  if [ -n "$GATEWAY_PUBLIC_KEY" ]; then
    [[ "$GATEWAY_KEY_ID" =~ ^[A-Za-z0-9._-]{1,64}$ ]] || invalid "--gateway-key-id '$GATEWAY_KEY_ID'" "must be 1-64 characters of A-Za-z0-9._-"
    { [ -f "$GATEWAY_PUBLIC_KEY" ] && [ -r "$GATEWAY_PUBLIC_KEY" ]; } || invalid "--gateway-public-key $GATEWAY_PUBLIC_KEY" "not a readable file"
    if [ "$(head -n1 "$GATEWAY_PUBLIC_KEY")" != "-----BEGIN PUBLIC KEY-----" ] \
        || ! grep -q -- "^-----END PUBLIC KEY-----" "$GATEWAY_PUBLIC_KEY" \
        || [ "$(wc -c <"$GATEWAY_PUBLIC_KEY")" -gt 4096 ]; then
      invalid "--gateway-public-key $GATEWAY_PUBLIC_KEY" "is not a PEM public key (-----BEGIN PUBLIC KEY-----); never give a pod the gateway's private key"
    fi
  fi
fi
if [ -n "$TS_AUTH_KEY" ] && has_control_chars "$TS_AUTH_KEY"; then
  invalid "--tailscale-auth-key" "must not contain control characters or newlines"
fi

# ------------------------------------------------------------------ what to install (checked before any change)
SOURCE_GIVEN=0
[ -n "$SOURCE" ] && SOURCE_GIVEN=1
SOURCE_KIND=""
if [ -z "$SOURCE" ] && [ -f "$SCRIPT_DIR/../../pyproject.toml" ]; then
  SOURCE="$(cd "$SCRIPT_DIR/../.." && pwd)"  # this script sits in a checkout: install that
fi
INSTALL_VENV=1
[ "$NO_SYSTEM" -eq 1 ] && [ "$SOURCE_GIVEN" -eq 0 ] && INSTALL_VENV=0
if [ "$INSTALL_VENV" -eq 1 ]; then
  case "$SOURCE" in
    "")
      usage_error "nothing to install: this script is not in a PlateBridge checkout, so give --source with the agent's wheel URL or package index URL (or PLATEBRIDGE_SOURCE)" ;;
    http://*|https://*)
      has_control_chars "$SOURCE" && invalid "--source" "must not contain control characters or newlines"
      [[ "$SOURCE" =~ ^https?://[^[:space:]/]+[^[:space:]]*$ ]] || invalid "--source" "is not a URL"
      case "${SOURCE%%[?#]*}" in
        *.whl) SOURCE_KIND="wheel URL" ;;
        *) SOURCE_KIND="package index" ;;
      esac
      # an index or wheel URL may carry credentials (https://user:token@host/…): never print them
      if [[ "$SOURCE" =~ ^https?://([^/@]+)@ ]]; then SECRETS+=("${BASH_REMATCH[1]}"); fi ;;
    *)
      if [ -d "$SOURCE" ]; then
        [ -f "$SOURCE/pyproject.toml" ] || usage_error "--source $SOURCE: no pyproject.toml (give a wheel, a URL or the repository directory)"
        SOURCE_KIND="repository"
      elif [[ "$SOURCE" == *.whl ]] && [ -f "$SOURCE" ]; then
        SOURCE_KIND="wheel file"
      else
        usage_error "--source $SOURCE: not a wheel URL, package index URL, wheel file or repository directory"
      fi ;;
  esac
fi

[ "$DRY_RUN" -eq 1 ] && say "dry run: nothing will be changed${ROOT:+ (root $ROOT)}"

# ------------------------------------------------------------------ 1. apt
if [ "$NO_SYSTEM" -eq 0 ] && [ "$SKIP_TS_INSTALL" -eq 0 ] && ! command -v tailscale >/dev/null 2>&1; then
  APT_PACKAGES+=(curl ca-certificates)
fi
if [ "$NO_SYSTEM" -eq 1 ]; then
  say "apt: skipped (--no-system)"
else
  apt_missing=()
  for pkg in "${APT_PACKAGES[@]}"; do
    pkg_installed "$pkg" || apt_missing+=("$pkg")
  done
  if [ "${#apt_missing[@]}" -eq 0 ]; then
    say "apt: ${APT_PACKAGES[*]} already installed"
  else
    say "apt: missing ${apt_missing[*]}"
    run apt-get update -qq
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt_missing[@]}"
  fi
fi

# ------------------------------------------------------------------ 2. user
if [ "$NO_SYSTEM" -eq 1 ]; then
  say "user: skipped (--no-system)"
elif getent passwd "$SERVICE_USER" >/dev/null 2>&1; then
  say "user: $SERVICE_USER exists"
else
  run useradd --system --user-group --home-dir "$STATE_DIR" --no-create-home \
    --shell /usr/sbin/nologin --comment "PlateBridge pod agent" "$SERVICE_USER"
fi

# ------------------------------------------------------------------ 3. venv + project
if [ "$INSTALL_VENV" -eq 0 ]; then
  say "venv: skipped (--no-system without --source)"
else
  say "venv: installing the agent from the $SOURCE_KIND $(redact_text "$SOURCE")"
  make_dir "$OPT_DIR" 0755
  if [ -x "$(r "$VENV_DIR/bin/python")" ]; then
    say "venv: $(r "$VENV_DIR") exists"
  else
    run python3.11 -m venv "$(r "$VENV_DIR")"
  fi
  PIP=("$(r "$VENV_DIR/bin/python")" -m pip install --quiet --disable-pip-version-check --upgrade)
  if [ "$SOURCE_KIND" = "package index" ]; then
    # --index-url, not --extra-index-url: "platebridge" must come from this index, never from PyPI
    run "${PIP[@]}" --index-url "$SOURCE" platebridge
  else
    run "${PIP[@]}" "$SOURCE"
  fi
  if [ "$DRY_RUN" -eq 0 ] && [ ! -x "$(r "$VENV_DIR/bin/platebridge-pod")" ]; then
    die "pip installed no platebridge-pod into $(r "$VENV_DIR") (is $(redact_text "$SOURCE") the PlateBridge agent?)"
  fi
fi

# ------------------------------------------------------------------ 4. dirs
OWNER="$SERVICE_USER:$SERVICE_USER"
make_dir "$ETC_DIR" 0750 "root:$SERVICE_USER"
make_dir "$STATE_DIR" 0750 "$OWNER"
make_dir "$HLS_DIR" 0750 "$OWNER"
make_dir "$REC_DIR" 0700 "$OWNER"

# ------------------------------------------------------------------ 5. config.yaml
# yq VALUE: a YAML double-quoted scalar (control characters were refused above).
yq() {
  local s="$1"
  s="${s//\\/\\\\}"
  s="${s//\"/\\\"}"
  printf '"%s"' "$s"
}

render_config() {
  cat <<EOF
# PlateBridge pod configuration, written by install-pod.sh on $(date -u +%Y-%m-%dT%H:%M:%SZ).
# Mode 0600, owned by $SERVICE_USER: it holds the portal key and the stream secret, and the
# agent (User=$SERVICE_USER) must read it; the unit's ProtectSystem=strict keeps /etc read-only
# for the agent. Every key: deploy/examples/pod.example.yaml.
# Check it: sudo -u $SERVICE_USER $VENV_DIR/bin/platebridge-pod check --config $CONFIG_PATH
portal_url: $(yq "$PORTAL_URL")
pod_api_key: $(yq "$POD_API_KEY")
pod_id: $(yq "$POD_ID")
site_id: $(yq "$SITE_ID")
company_id: $(yq "$COMPANY_ID")

camera_id: $(yq "$CAMERA_ID")
camera_rtsp_url: $(yq "$CAMERA_RTSP_URL")
EOF
  if [ -n "$FRIGATE_CAMERA" ]; then
    printf 'frigate_camera: %s\n' "$(yq "$FRIGATE_CAMERA")"
  fi
  if [ -n "$TIMEZONE" ]; then
    printf '\n# the site time zone: plain-date whitelist bounds (starts/ends) are its days\ntimezone: %s\n' "$(yq "$TIMEZONE")"
  fi
  cat <<EOF

# Live view: HLS only on the pod's tailnet address (tailscale up --advertise-tags=tag:pod)
enable_streaming: true
stream_port: 8000
stream_bind: auto
EOF
  if [ -n "$GATEWAY_PUBLIC_KEY" ]; then
    cat <<EOF
# the gateway's Ed25519 public key: verifies its tokens, can mint none
gateway_public_keys:
  $(yq "$GATEWAY_KEY_ID"): $(yq "$ETC_DIR/gateway-$GATEWAY_KEY_ID.pub")
EOF
  fi
  if [ -n "$STREAM_SECRET" ]; then
    cat <<EOF
# legacy: the shared stream secret (a stolen pod can mint tokens with it; remove it once the
# gateway signs with its Ed25519 key and gateway_public_keys is set)
stream_secret: $(yq "$STREAM_SECRET")
EOF
  fi
  cat <<EOF

state_dir: $STATE_DIR
hls_dir: $HLS_DIR
recordings_dir: $REC_DIR

# Frigate's MQTT broker (add mqtt_username / mqtt_password if it needs them)
enable_mqtt: true
mqtt_host: "localhost"
mqtt_port: 1883
mqtt_topic: "frigate/events"
EOF
}

if [ "$WRITE_CONFIG" -eq 0 ]; then
  say "config: $(r "$CONFIG_PATH") exists; kept unchanged (--force-config to rewrite it)"
  if [ "$DRY_RUN" -eq 0 ] && [ "$NO_SYSTEM" -eq 0 ]; then
    # Keep the mode and owner right on re-runs (the content is never touched).
    run chmod 0600 "$(r "$CONFIG_PATH")"
    run chown "$SERVICE_USER:$SERVICE_USER" "$(r "$CONFIG_PATH")"
  fi
else
  if [ "$CONFIG_EXISTS" -eq 1 ]; then
    backup="$CONFIG_PATH.bak-$(date -u +%Y%m%dT%H%M%SZ)"
    if [ "$DRY_RUN" -eq 1 ]; then
      printf '[dry-run] would keep the old config as %s (mode 0600)\n' "$(r "$backup")"
    else
      cp -p "$(r "$CONFIG_PATH")" "$(r "$backup")"
      chmod 0600 "$(r "$backup")"
      say "config: old config kept as $(r "$backup")"
    fi
  fi
  keys="portal_url, pod_api_key=<redacted>, pod_id=$POD_ID, site_id, company_id, camera_id=$CAMERA_ID, camera_rtsp_url=<redacted>${FRIGATE_CAMERA:+, frigate_camera=$FRIGATE_CAMERA}${TIMEZONE:+, timezone=$TIMEZONE}${GATEWAY_PUBLIC_KEY:+, gateway_public_keys=$GATEWAY_KEY_ID}${STREAM_SECRET:+, stream_secret=<redacted>}, stream_bind=auto"
  if [ -n "$GATEWAY_PUBLIC_KEY" ]; then
    write_file "$ETC_DIR/gateway-$GATEWAY_KEY_ID.pub" 0644 "" "the gateway's public key ($GATEWAY_KEY_ID)" <"$GATEWAY_PUBLIC_KEY"
  fi
  render_config | write_file "$CONFIG_PATH" 0600 "$OWNER" "$keys"
fi

# ------------------------------------------------------------------ 6. tailscale install
if [ "$NO_SYSTEM" -eq 1 ] || [ "$SKIP_TS_INSTALL" -eq 1 ]; then
  say "tailscale: install skipped ($([ "$NO_SYSTEM" -eq 1 ] && printf -- '--no-system' || printf -- '--skip-tailscale-install'))"
elif command -v tailscale >/dev/null 2>&1; then
  say "tailscale: already installed ($(command -v tailscale))"
else
  # Tailscale's own apt repository (https://pkgs.tailscale.com/stable/#debian-bookworm).
  distro="debian"
  codename="bookworm"
  if [ -r /etc/os-release ]; then
    # shellcheck disable=SC1091
    . /etc/os-release
    case "${ID:-debian}" in raspbian|ubuntu|debian) distro="$ID" ;; esac
    codename="${VERSION_CODENAME:-bookworm}"
  fi
  base="https://pkgs.tailscale.com/stable/$distro/$codename"
  run install -d -m 0755 "$(r /usr/share/keyrings)" "$(r /etc/apt/sources.list.d)"
  run curl -fsSL -o "$(r /usr/share/keyrings/tailscale-archive-keyring.gpg)" "$base.noarmor.gpg"
  run curl -fsSL -o "$(r /etc/apt/sources.list.d/tailscale.list)" "$base.tailscale-keyring.list"
  run apt-get update -qq
  run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tailscale
  run systemctl enable --now tailscaled.service
fi

# ------------------------------------------------------------------ 7. tailscale up
TS_UP_ARGS=(--advertise-tags=tag:pod "--hostname=$POD_ID")
if [ "$NO_SYSTEM" -eq 1 ] || [ "$SKIP_TS_UP" -eq 1 ]; then
  say "tailscale: up skipped ($([ "$NO_SYSTEM" -eq 1 ] && printf -- '--no-system' || printf -- '--skip-tailscale-up'))"
elif [ "$DRY_RUN" -eq 1 ]; then
  printf '[dry-run] would run (unless already joined): tailscale up --auth-key=<redacted> %s\n' "${TS_UP_ARGS[*]}"
else
  command -v tailscale >/dev/null 2>&1 || die "tailscale is not installed (drop --skip-tailscale-install, or install it)"
  if tailscale ip -4 >/dev/null 2>&1; then
    say "tailscale: already joined as $(tailscale ip -4 | head -n1); not re-running tailscale up"
  else
    # The key goes through a 0600 file (tailscale's "file:" form), never argv.
    keyfile="$(mktemp)"
    trap 'rm -f "$keyfile"' EXIT
    printf '%s' "$TS_AUTH_KEY" >"$keyfile"
    say "+ tailscale up --auth-key=<redacted> ${TS_UP_ARGS[*]}"
    tailscale up "--auth-key=file:$keyfile" "${TS_UP_ARGS[@]}" \
      || die "tailscale up failed: is the key valid, unexpired, and allowed to use tag:pod (tagOwners)?"
    rm -f "$keyfile"
    trap - EXIT
  fi
fi

# ------------------------------------------------------------------ 8. systemd unit
unit_dest="$(r "$UNIT_PATH")"
if [ -f "$UNIT_SRC" ]; then unit_from="$UNIT_SRC"; else unit_from="the copy inside $PROG"; fi
if [ -f "$unit_dest" ] && unit_text | cmp -s - "$unit_dest"; then
  say "unit: $unit_dest up to date"
  UNIT_CHANGED=0
else
  make_dir "$(dirname "$UNIT_PATH")" 0755
  unit_text | write_file "$UNIT_PATH" 0644 "" "systemd unit (from $unit_from)"
  UNIT_CHANGED=1
fi
if [ "$NO_SYSTEM" -eq 1 ]; then
  say "systemctl: skipped (--no-system)"
else
  [ "$UNIT_CHANGED" -eq 1 ] && run systemctl daemon-reload
  run systemctl enable "$UNIT_NAME"
  if [ "$NO_START" -eq 1 ]; then
    say "systemctl: not started (--no-start); start with: systemctl start $UNIT_NAME"
  else
    run systemctl restart "$UNIT_NAME"
  fi
fi

if [ "$DRY_RUN" -eq 1 ]; then
  say "dry run complete: nothing was changed"
else
  say "done. Logs: journalctl -u ${UNIT_NAME%.service} -f   Health: curl -s http://127.0.0.1:8000/health"
fi
