#!/usr/bin/env bash
# Set up omcp_py from this checkout: check Python, install uv if it is missing, sync
# the environment from uv.lock, then run `omcp_py doctor`, which checks the Docker
# engine and the sandbox image, runs a real sandbox, and prints the Claude Desktop
# config to paste. Safe to run again: what is already there is kept.
#
#   ./install.sh              PYTHON=/path/to/python3.12 ./install.sh
#
# uv comes from the package index (pip), not from a script off the web: it goes into
# its own virtual environment under ${XDG_DATA_HOME:-~/.local/share}/omcp_py/uv.
set -euo pipefail

cd "$(dirname "$0")"
python="${PYTHON:-python3}"

say() { printf '%s\n' "$*"; }
fail() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }

# 1. Python 3.10 or newer.
command -v "$python" >/dev/null 2>&1 \
  || fail "no $python on PATH: install Python 3.10 or newer (python.org, brew, apt), or set PYTHON=/path/to/python3"
version="$("$python" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')" \
  || fail "$python does not run"
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  fail "Python $version is too old: omcp_py needs 3.10 or newer; set PYTHON=/path/to/python3.10+"
fi
say "Python $version ($(command -v "$python"))"

# 2. uv: the one on PATH, the one this script installed before, or a new one.
uv_home="${XDG_DATA_HOME:-$HOME/.local/share}/omcp_py/uv"
if command -v uv >/dev/null 2>&1; then
  uv="$(command -v uv)"
elif [ -x "$uv_home/bin/uv" ]; then
  uv="$uv_home/bin/uv"
else
  say "uv not found: installing it from the package index into $uv_home"
  "$python" -m venv "$uv_home" \
    || fail "could not make a virtual environment (on Debian/Ubuntu: apt install python3-venv)"
  "$uv_home/bin/python" -m pip install --quiet --disable-pip-version-check "uv>=0.5,<1" \
    || fail "pip could not install uv (behind a proxy: set PIP_CERT or PIP_INDEX_URL)"
  uv="$uv_home/bin/uv"
fi
say "uv $("$uv" --version | cut -d' ' -f2) ($uv)"

# 3. The environment, exactly as uv.lock pins it (what is installed already stays).
"$uv" sync --frozen --no-dev --inexact --python "$python" --quiet \
  || fail "uv sync failed (behind a TLS-intercepting proxy: set SSL_CERT_FILE to your CA bundle)"
say "environment ready: $(pwd)/.venv"

# 4. A CA bundle given to uv (a TLS-intercepting proxy) is the one the sandboxes'
# installer needs too. Kept in ./.env, so that every later command run from here has
# it; doctor checks it and writes it into the client config it prints.
if [ -n "${SSL_CERT_FILE:-}" ] && [ -z "${PACKAGE_CA_BUNDLE:-}" ] \
  && ! grep -qs '^PACKAGE_CA_BUNDLE=' .env; then
  if [ -s .env ] && [ -n "$(tail -c1 .env)" ]; then printf '\n' >> .env; fi
  printf 'PACKAGE_CA_BUNDLE=%s\n' "$SSL_CERT_FILE" >> .env
  say "wrote PACKAGE_CA_BUNDLE=$SSL_CERT_FILE (your SSL_CERT_FILE) to $(pwd)/.env: the sandboxes' installer trusts it too"
fi
say "run omcp_py as $(pwd)/.venv/bin/omcp_py (or: $uv run omcp_py, from $(pwd))"

# 5. The engine, the image, a real sandbox, and the Claude Desktop config.
say ""
exec .venv/bin/omcp_py doctor
