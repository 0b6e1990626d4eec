#!/usr/bin/env bash
# Prepare everything the project needs, idempotently, on Debian 12 / Python 3.11 (x86-64):
#   1. system packages (apt, as root or through sudo) — only those missing:
#      opencv-doc (the bundled test video vtest.avi), python-nbsphinx-doc (a 1906 race clip for
#      bench/quality.py), cmake, a C/C++ compiler, make,
#      Python headers and venv support
#   2. the venv .venv/ in the repo root
#   3. Python dependencies from requirements/*.txt (skipped when a stamp says they are current)
#   4. the CMake-export path fix for the ros-jazzy wheels (scripts/fix_ros_wheel_cmake.py)
#   5. build + install vidaction_ros into the venv: `pip install --no-build-isolation --no-deps .`
#      (setup.py drives CMakeLists.txt; the CMake build dir build/pip-cmake is kept, so an
#      unchanged tree reinstalls in seconds)
# Then: `source scripts/env.sh`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
VTEST=/usr/share/doc/opencv-doc/examples/data/vtest.avi
GP_CLIP=/usr/share/doc/python-nbsphinx/html/www/wikimediacommons/Shepard_Calais_1906_FrenchGP.ogv.160p.ogv
START=$SECONDS

say() { printf '[setup_env] %s\n' "$*"; }
die() { printf '[setup_env] ERROR: %s\n' "$*" >&2; exit 1; }

# One run at a time per checkout: parallel test.sh / demo.sh runs would otherwise pip-install
# into the same venv and share the CMake build dir at once.
mkdir -p "$ROOT/build"
if command -v flock >/dev/null; then
  exec 9>"$ROOT/build/.setup_env.lock"
  flock -n 9 || { say "waiting for another setup_env.sh in this checkout"; flock 9; }
fi

# --- 1. system packages -------------------------------------------------------------------
PY="$(command -v python3.11 || command -v python3 || true)"
[ -n "$PY" ] || die "no python3.11 / python3 found (Debian 12: apt-get install python3)"

apt_missing=()
[ -f "$VTEST" ] || apt_missing+=(opencv-doc)
[ -f "$GP_CLIP" ] || apt_missing+=(python-nbsphinx-doc)
command -v cmake >/dev/null || apt_missing+=(cmake)
# The network-camera tests serve a real HTTP MPEG-TS stream with the ffmpeg command; the report test opens
# report.html in headless Chromium.
command -v ffmpeg >/dev/null || apt_missing+=(ffmpeg)
command -v chromium >/dev/null || apt_missing+=(chromium)
{ command -v c++ >/dev/null && command -v cc >/dev/null; } || apt_missing+=(g++)
{ command -v make >/dev/null || command -v ninja >/dev/null; } || apt_missing+=(make)
# Headers for the generated Python typesupport modules; ensurepip for `python -m venv`.
# (Only fixable through apt for Debian's own /usr/bin python.)
if [ ! -d "$VENV" ] && ! "$PY" -c 'import ensurepip' 2>/dev/null; then
  apt_missing+=("$(basename "$PY")-venv")
fi
if ! "$PY" -c 'import os, sysconfig, sys
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; then
  apt_missing+=("$(basename "$PY")-dev")
fi

if [ ${#apt_missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    SUDO=(sudo)
  else
    die "missing system packages: ${apt_missing[*]}. Run this script as root or with" \
        "password-less sudo, or install them: apt-get install -y ${apt_missing[*]}"
  fi
  say "apt-get install ${apt_missing[*]}"
  "${SUDO[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq "${apt_missing[@]}" >/dev/null
  [ -f "$VTEST" ] || die "opencv-doc is installed but $VTEST is still missing"
else
  say "system packages present (opencv-doc video, race clip, cmake, compiler, Python headers, ffmpeg, chromium)"
fi

# --- 2. venv ------------------------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV with $PY"
  "$PY" -m venv "$VENV"
  # Debian's bundled pip/setuptools predate PEP 517 builds without a pyproject.toml and the
  # built-in bdist_wheel; bring them up to date once, at creation.
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip setuptools wheel
fi
VPY="$VENV/bin/python"
"$VPY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' ||
  die "$VENV is not Python 3.11 (the ros-jazzy wheels are cp311); remove it and rerun"
PIP=("$VPY" -m pip --disable-pip-version-check)

# --- 3. Python dependencies -----------------------------------------------------------------
REQ=requirements
HASH="$(cat "$REQ/torch.txt" "$REQ/runtime.txt" "$REQ/build.txt" "$REQ/test.txt" \
          "$REQ/nodeps.txt" | sha256sum | cut -c1-16)"
STAMP="$VENV/.vidaction-deps-$HASH"
if [ -f "$STAMP" ]; then
  say "Python dependencies up to date ($(basename "$STAMP"))"
else
  # torch first and alone: the pinned local CPU build. Were it resolved together with the
  # packages that depend on it, pip would fetch the multi-GB CUDA build. Later installs get it
  # as a constraint so nothing can replace it.
  say "pip install torch (CPU build)"
  "${PIP[@]}" install -q -r "$REQ/torch.txt"
  say "pip install runtime, build and test requirements"
  "${PIP[@]}" install -q -c "$REQ/torch.txt" \
    -r "$REQ/runtime.txt" -r "$REQ/build.txt" -r "$REQ/test.txt"
  say "pip install --no-deps $(grep -v '^#' "$REQ/nodeps.txt" | xargs)"
  "${PIP[@]}" install -q --no-deps -r "$REQ/nodeps.txt"
  rm -f "$VENV"/.vidaction-deps-*
  touch "$STAMP"
fi

# --- 4. ros-jazzy wheels' CMake files ---------------------------------------------------------
"$VPY" scripts/fix_ros_wheel_cmake.py

# --- 5. build and install vidaction_ros -----------------------------------------------------
say "building and installing vidaction_ros into the venv (pip route, CMake dir build/pip-cmake)"
t0=$SECONDS
# PATH: cmake and the generators must see the venv's python; AMENT_PREFIX_PATH: rosidl finds
# its generators through the venv's ament index (setup.py defaults it the same way).
PATH="$VENV/bin:$PATH" AMENT_PREFIX_PATH="${AMENT_PREFIX_PATH:-$VENV}" \
  "${PIP[@]}" install -q --no-build-isolation --no-deps "$ROOT"
say "vidaction_ros installed ($((SECONDS - t0)) s)"

# A quick check from outside the source tree that the installed package is the one imported.
(cd / && "$VPY" -c 'import vidaction_ros.msg, vidaction_ros.srv') ||
  die "the installed vidaction_ros does not import"
say "done in $((SECONDS - START)) s; now: source scripts/env.sh"
