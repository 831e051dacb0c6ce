#!/usr/bin/env bash
# Create .venv with Python 3.12 and install robopolicy with every extra (sim, hardware, dev), plus the
# Debian libraries the simulators and drivers load at run time. Idempotent: a second run with an
# unchanged pyproject.toml does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian libraries: EGL/GL for MuJoCo's offscreen rendering (MUJOCO_GL=egl), libusb for RealSense and
# HID devices. Installed only when missing, so machines that have them need no root or network.
need=()
for pkg in libegl1 libgl1 libgles2 libusb-1.0-0 libglib2.0-0; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "[setup] installing Debian packages: ${need[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

find_python() {
  for cand in python3.12 "$(command -v pyenv >/dev/null 2>&1 && pyenv root)/versions/3.12"*/bin/python3.12; do
    if [ -n "$cand" ] && "$cand" -c 'import sys; assert sys.version_info[:2] == (3, 12)' >/dev/null 2>&1; then
      echo "$cand"; return 0
    fi
  done
  return 1
}

stamp=".venv/.robopolicy-install-$(sha1sum pyproject.toml | cut -c1-12)"
if [ -x .venv/bin/python ] && [ -f "$stamp" ]; then
  exit 0
fi
if [ ! -x .venv/bin/python ]; then
  PY=$(find_python) || { echo "[setup] Python 3.12 not found (lerobot 0.6 needs >= 3.12): install it, e.g. 'pyenv install 3.12'" >&2; exit 1; }
  echo "[setup] creating .venv with $PY"
  "$PY" -m venv .venv
fi
echo "[setup] installing robopolicy[sim,hardware,deploy,dev] into .venv (a few minutes the first time)"
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[sim,hardware,deploy,dev]'
rm -f .venv/.robopolicy-install-*
touch "$stamp"
echo "[setup] done"
