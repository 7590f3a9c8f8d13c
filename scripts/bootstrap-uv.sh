#!/usr/bin/env bash
# Print the path of a uv to use: the one on PATH, or one installed from PyPI into .tools/.
# On a fresh Debian/Ubuntu machine run as root, python3 and its venv module come from apt.
set -euo pipefail
UV_VERSION=0.13.8
if command -v uv >/dev/null; then command -v uv; exit 0; fi
if [ -x .tools/bin/uv ]; then echo .tools/bin/uv; exit 0; fi
if ! command -v python3 >/dev/null || ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "bootstrap: apt-get install python3 python3-venv" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null
  else
    echo "bootstrap: need python3 with its venv module (apt-get install python3-venv) or uv on PATH" >&2
    exit 1
  fi
fi
echo "bootstrap: installing uv $UV_VERSION into .tools/" >&2
rm -rf .tools
python3 -m venv .tools >&2
.tools/bin/pip install -q "uv==$UV_VERSION" >&2
echo .tools/bin/uv
