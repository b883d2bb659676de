#!/usr/bin/env bash
# Installs the Debian packages TrackShift's tests need, only when missing (idempotent). Sourced by test.sh.
set -euo pipefail

# package -> a command it provides (checked first, so nothing is installed when all are present)
declare -A NEED=(
  [iproute2]=ip          # network namespaces for the emulated-link tests
  [util-linux]=mount     # tmpfs mounts for the disk-full tests
  [procps]=ps
  [time]=/usr/bin/time   # peak RSS in benchmarks
  [iptables]=iptables    # blocking UDP in a namespace (the TCP fallback test)
  [e2fsprogs]=chattr     # an immutable output dir (the permission-denied test as root)
  [postgresql]=initdb    # the orchestrator's API suite against a real PostgreSQL (Debian: /usr/lib/postgresql/<ver>/bin)
)

missing=()
for pkg in "${!NEED[@]}"; do
  cmd=${NEED[$pkg]}
  # Debian keeps PostgreSQL's programs off PATH, in /usr/lib/postgresql/<version>/bin.
  if ! command -v "$cmd" >/dev/null 2>&1 && [ ! -x "$cmd" ] && ! compgen -G "/usr/lib/postgresql/*/bin/$cmd" >/dev/null; then
    missing+=("$pkg")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "error: missing packages: ${missing[*]}; install them with: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  echo "installing: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
[ -e /dev/net/tun ] || { echo "error: /dev/net/tun is missing: the link emulator needs TUN (modprobe tun)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "error: the tests create network namespaces and tmpfs mounts: run them as root" >&2; exit 1; }
