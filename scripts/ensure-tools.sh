#!/usr/bin/env bash
# Make the programs the tool layer runs present (docs/tools.md): Debian's headless Chromium
# for browser.fetch/screenshot/pdf and ffmpeg/ffprobe for media.probe/transcode.
#
# Idempotent, one line per program: present -> left alone; missing -> `apt-get update` (once)
# and installed from Debian's packages. Nothing is ever downloaded at run time (no
# `playwright install`, no browser build of its own): the tools start these binaries.
# fonts-liberation gives pages the metric-compatible fonts Chromium recommends, so
# screenshots and PDFs have readable text on a minimal system. promtool (Debian's
# `prometheus` package) checks the scrape configs and the alert rules in deploy/prometheus/
# and runs their unit tests (tests/unit/test_prometheus_rules.py); its prometheus server
# scrapes a running stack in tests/acceptance/test_prometheus_stack.py.
#
# Environment: SHIFTFLOW_CHROMIUM_PATH, SHIFTFLOW_FFMPEG_PATH, SHIFTFLOW_FFPROBE_PATH (the
# same settings the tools read) and SHIFTFLOW_PROMTOOL_PATH (the tests') name binaries
# installed some other way; they are only checked.
set -euo pipefail

CHROMIUM=${SHIFTFLOW_CHROMIUM_PATH:-/usr/bin/chromium}
FFMPEG=${SHIFTFLOW_FFMPEG_PATH:-/usr/bin/ffmpeg}
FFPROBE=${SHIFTFLOW_FFPROBE_PATH:-/usr/bin/ffprobe}
PROMTOOL=${SHIFTFLOW_PROMTOOL_PATH:-/usr/bin/promtool}

log() { printf 'ensure-tools: %s\n' "$*"; }
die() { printf 'ensure-tools: ERROR: %s\n' "$*" >&2; exit 1; }

SUDO=()
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO=(sudo -n); fi
as_root() { "${SUDO[@]}" "$@"; }

APT_UPDATED=0
# apt_install WHAT PACKAGE...: install from Debian's packages (waiting for a dpkg lock that
# another install holds, rather than failing).
apt_install() {
  local what=$1; shift
  command -v apt-get >/dev/null 2>&1 || die "$what is missing and apt-get is not available: install $* by hand"
  if [ "$(id -u)" -ne 0 ] && [ ${#SUDO[@]} -eq 0 ]; then
    die "$what is missing; installing $* needs root (run this script as root or with sudo)"
  fi
  local apt_log
  apt_log=$(mktemp /tmp/ensure-tools-apt.XXXXXX)
  if [ "$APT_UPDATED" -eq 0 ]; then
    log "apt-get update (once)"
    as_root apt-get -o DPkg::Lock::Timeout=600 update -qq >"$apt_log" 2>&1 ||
      { tail -n 30 "$apt_log" >&2; die "$what: apt-get update failed"; }
    APT_UPDATED=1
  fi
  log "$what: installing $* from Debian's packages"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
    --no-install-recommends "$@" >"$apt_log" 2>&1 ||
    { tail -n 30 "$apt_log" >&2; die "$what: apt-get install $* failed (log: $apt_log)"; }
  rm -f "$apt_log"
}

# ensure WHAT BINARY DEFAULT PACKAGE...: install PACKAGE... when BINARY is missing, but only
# when BINARY is the package's own path (a custom path is the operator's to provide).
ensure() {
  local what=$1 binary=$2 default=$3; shift 3
  if [ -x "$binary" ]; then
    log "$what: present at $binary"
    return 0
  fi
  [ "$binary" = "$default" ] || die "$what: $binary is not an executable (set by the environment; install it there)"
  apt_install "$what" "$@"
  [ -x "$binary" ] || die "$what: still no $binary after installing $*"
  log "$what: installed at $binary"
}

ensure Chromium "$CHROMIUM" /usr/bin/chromium chromium fonts-liberation
ensure ffmpeg "$FFMPEG" /usr/bin/ffmpeg ffmpeg
ensure ffprobe "$FFPROBE" /usr/bin/ffprobe ffmpeg
# promtool checks rules and configs; tests/acceptance/test_prometheus_stack.py starts the
# package's /usr/bin/prometheus itself (the package's own service is not used).
ensure promtool "$PROMTOOL" /usr/bin/promtool prometheus
log "all tools ready"
