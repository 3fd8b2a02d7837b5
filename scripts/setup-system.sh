#!/usr/bin/env bash
# The packaged PostgreSQL binaries link against a few system libraries (zstd, lz4, OpenSSL,
# GSSAPI). Install them when missing (Debian/Ubuntu); elsewhere just say what is needed.
set -euo pipefail
missing=()
for lib in libzstd.so.1 liblz4.so.1 libssl.so.3 libgssapi_krb5.so.2; do
  ldconfig -p 2>/dev/null | grep -q "$lib" || missing+=("$lib")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "setup: missing system libraries: ${missing[*]}" >&2
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libzstd1 liblz4-1 libssl3 libgssapi-krb5-2
else
  echo "setup: install them with your package manager (Debian: libzstd1 liblz4-1 libssl3 libgssapi-krb5-2)" >&2
  exit 1
fi
