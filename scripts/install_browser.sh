#!/usr/bin/env bash
# Headless Chromium for the browser test (tests/test_serve_browser.py): Debian's `chromium` and
# `chromium-driver`, installed with apt-get when `chromedriver` is missing. Runs apt-get as root,
# or through sudo when not root and sudo exists; otherwise says what to run (the test is then
# skipped, naming the missing program). `make install` (hence `make test` and .ci/run) calls it.
set -euo pipefail

packages=(chromium chromium-driver)

if command -v chromedriver >/dev/null 2>&1; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_browser.sh: chromedriver is missing and this system has no apt-get;" \
    "install Chromium and its chromedriver with your package manager to run the browser test" >&2
  exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1; then
  as_root=(sudo)
else
  echo "install_browser.sh: chromedriver is missing and installing it needs root; run as root:" \
    "apt-get update && apt-get install -y --no-install-recommends ${packages[*]}" >&2
  exit 0
fi
echo "install_browser.sh: installing ${packages[*]} for the browser test" >&2
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
  apt-get install -y --no-install-recommends "${packages[@]}"
