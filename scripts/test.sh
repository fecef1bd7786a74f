#!/usr/bin/env bash
# Install everything the test suite needs, then run every quality gate and the tests.
# Usage: bash scripts/test.sh [extra pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests use as real peers. A missing tool is a failure, never a skip.
need=()
command -v socat >/dev/null 2>&1 || need+=(socat)
command -v nc >/dev/null 2>&1 || need+=(netcat-openbsd)
command -v nmap >/dev/null 2>&1 || need+=(nmap)
command -v iperf3 >/dev/null 2>&1 || need+=(iperf3)
command -v ping >/dev/null 2>&1 || need+=(iputils-ping)
command -v ss >/dev/null 2>&1 || need+=(iproute2)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v chromium >/dev/null 2>&1 || need+=(chromium)  # the chat page, driven by Playwright
command -v tmux >/dev/null 2>&1 || need+=(tmux)
if ((${#need[@]})); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${need[*]} with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "the tests need these Debian packages: ${need[*]} (sudo apt-get install ${need[*]})" >&2
    exit 1
  fi
fi

# A project virtualenv (Debian's system Python refuses `pip install` outside one); reuse the
# environment we are already in, if any.
if [ -n "${VIRTUAL_ENV:-}" ]; then
  py=python
else
  [ -x .venv/bin/python ] || python3 -m venv .venv
  py=.venv/bin/python
fi
"$py" -m pip install -q -e '.[dev]'
# Playwright drives Debian's chromium (no browser download): tests read this variable.
export OPENSOCKET_CHROMIUM="${OPENSOCKET_CHROMIUM:-$(command -v chromium)}"
# Screenshots the browser tests take (the chat page on a desktop and a phone) are kept here.
export OPENSOCKET_ARTIFACTS="${OPENSOCKET_ARTIFACTS:-$PWD/artifacts}"

echo "== ruff check";          "$py" -m ruff check src tests bench
echo "== ruff format --check"; "$py" -m ruff format --check src tests bench
echo "== mypy --strict";       "$py" -m mypy src
echo "== pytest"
if (($#)); then
  # some tests only (arguments given): the coverage gate applies to the whole suite
  "$py" -m pytest -p no:cacheprovider --timeout=120 "$@"
else
  "$py" -m pytest -p no:cacheprovider --timeout=120 \
    --cov=opensocket --cov-branch --cov-report=term-missing:skip-covered --cov-fail-under=90
fi
