#!/usr/bin/env bash
# Set up if needed, lint, and run the default (fast) test suite. Extra arguments go to pytest,
# e.g. `bash scripts/test.sh -m slow` for the long tests.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
export MUJOCO_GL=egl HF_HUB_OFFLINE=1
echo "[test] ruff check"
.venv/bin/python -m ruff check . || exit 1
echo "[test] pytest"
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
rc=$?
if [ $rc -eq 5 ]; then
  echo "[test] pytest collected no tests: treated as a failure" >&2
  exit 1
fi
exit $rc
