#!/usr/bin/env bash
# The browser the annotation page's tests drive: Debian's Chromium and its ChromeDriver
# (/usr/bin/chromium, /usr/bin/chromedriver), installed with apt-get when missing. Run by the
# Makefile's test environment target.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "install-browser.sh: install the chromium and chromium-driver packages (as root:" \
        "apt-get install -y chromium chromium-driver); the browser tests need them" >&2
    exit 1
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
echo "installed $(chromium --version)"
