#!/usr/bin/env bash
# Prepare a fresh machine for Trackside: virtual environment, Python packages, Debian's
# Mosquitto and Chromium, Apache Kafka's jars, MicroPython libraries. Safe to run again.
# With --bench also what the benchmarks need: the bench extra, and gcc-multilib to build the
# 32-bit MicroPython unix port.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1;34m==>\033[0m %s\n' "$*"; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "need root for: $* (install sudo or run as root)" >&2; exit 1; fi
}

apt_updated=""
apt_install() {
  if [ -z "$apt_updated" ]; then
    say "Updating Debian package lists"
    as_root apt-get update -qq
    apt_updated=1
  fi
  say "Installing $* from Debian"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

command -v java >/dev/null || apt_install default-jre-headless
command -v mvn >/dev/null || apt_install maven
[ -x /usr/sbin/mosquitto ] || command -v mosquitto >/dev/null || apt_install mosquitto mosquitto-clients
[ -x /usr/bin/prometheus-alertmanager ] || apt_install prometheus-alertmanager  # notifications
command -v systemd-analyze >/dev/null || apt_install systemd  # checks the generated unit
if [ "${TRACKSIDE_SKIP_BROWSER:-}" != 1 ] && [ ! -x /usr/bin/chromium ]; then
  apt_install chromium
fi

if [ ! -x .venv/bin/python ]; then
  say "Creating the virtual environment .venv"
  python3 -m venv .venv
fi
stamp=.venv/.trackside-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  say "Installing Python packages into .venv"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[dev]'
  touch "$stamp"
fi

if [ "${1:-}" = --bench ]; then
  echo 'int main(void) { return 0; }' | gcc -m32 -x c - -o /dev/null 2>/dev/null || apt_install gcc-multilib
  say "Installing the benchmarks' Python packages into .venv"
  .venv/bin/pip install -q -e '.[dev,bench]'
fi

say "Resolving Apache Kafka's jars (cached after the first run)"
.venv/bin/trackside kafka fetch
