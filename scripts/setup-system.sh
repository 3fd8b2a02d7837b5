#!/usr/bin/env bash
# System packages, installed only when missing (Debian/Ubuntu as root; elsewhere it says what is needed):
# - the libraries the packaged PostgreSQL binaries link against (zstd, lz4, OpenSSL, GSSAPI): required;
# - Debian's chromium for the approval page's browser test (tests/e2e): optional; without it that test
#   is skipped and says so (Playwright's own browser download is not used).
set -euo pipefail
can_apt() { command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; }
updated=""
apt_install() {
  [ -n "$updated" ] || { apt-get update -qq; updated=1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

missing=()
# read the cache once: `ldconfig -p | grep -q` under pipefail fails whenever grep exits before ldconfig has
# written everything (SIGPIPE), reporting a present library as missing (about 1 check in 40 here)
libs=$(ldconfig -p 2>/dev/null || true)
for lib in libzstd.so.1 liblz4.so.1 libssl.so.3 libgssapi_krb5.so.2; do
  grep -qF "$lib" <<<"$libs" || missing+=("$lib")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: missing system libraries: ${missing[*]}" >&2
  if can_apt; then
    apt_install libzstd1 liblz4-1 libssl3 libgssapi-krb5-2
  else
    echo "setup: install them with your package manager (Debian: libzstd1 liblz4-1 libssl3 libgssapi-krb5-2)" >&2
    exit 1
  fi
fi

if [ ! -x /usr/bin/chromium ]; then
  if can_apt && apt_install chromium; then
    echo "setup: installed chromium (browser test of the approval page)" >&2
  else
    echo "setup: chromium not installed (needs apt-get as root): the approval page's browser test will be skipped" >&2
  fi
fi
