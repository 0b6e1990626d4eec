#!/usr/bin/env bash
# Build what the GPU machine needs to run the pipeline and the GPU benches (bench/device/run.sh there).
#
#   bash bench/device/build_bundle.sh        # here, once per change of the package: ~2 min, then seconds
#
# The GPU machine has Python 3.12 with torch (CUDA), transformers, numpy, onnx, onnxruntime, pyyaml and pytest,
# but no ROS, no hnswlib, no network (../shared/gpu-device.md). So this builds, for cp312:
#   build/device/bundle/whl/   vidaction_ros (the CMake route, as setup_env.sh builds it for 3.11), the ROS
#                              runtime closure (every ros-jazzy-* wheel a cp312 venv pulls in for
#                              requirements/runtime.txt's ROS lines), hnswlib (built from source without
#                              -march=native, stripped) and iceoryx2
#   build/device/bundle/video/ the demo video (vtest.avi)
# and prints the size: with the working tree it must stay under the device call's 64 MiB.
# Then:  run(command="bash bench/device/run.sh", carry=["build/device/bundle"])
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
WORK=build/device
BUNDLE=$WORK/bundle
VENV=$WORK/venv312
VTEST=/usr/share/doc/opencv-doc/examples/data/vtest.avi
say() { printf '[build_bundle] %s\n' "$*"; }
die() { printf '[build_bundle] ERROR: %s\n' "$*" >&2; exit 1; }

is312() { "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; }
if [ -z "${PY312:-}" ]; then
  # python3.12 on PATH may be a pyenv shim that runs no 3.12 here: take the first candidate that does.
  for candidate in "$(command -v python3.12 || true)" "$HOME"/.pyenv/versions/3.12*/bin/python3.12; do
    if [ -n "$candidate" ] && is312 "$candidate"; then PY312=$candidate; break; fi
  done
fi
[ -n "${PY312:-}" ] && is312 "$PY312" ||
  die "no Python 3.12 (set PY312=/path/to/python3.12): the GPU machine runs 3.12, so its wheels are cp312"
[ -f "$VTEST" ] || die "$VTEST missing (bash scripts/setup_env.sh installs opencv-doc)"

# -- 1. a cp312 build environment: the ROS build wheels and the ROS runtime wheels -----------------------
mkdir -p "$WORK"
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV with $PY312"
  "$PY312" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip setuptools wheel
fi
VPY="$VENV/bin/python"
PIP=("$VPY" -m pip --disable-pip-version-check -q)
grep -E '^ros-jazzy-' requirements/runtime.txt | sed 's/[[:space:]]*#.*//' > "$WORK/ros_runtime.txt"
HASH="$(cat "$WORK/ros_runtime.txt" requirements/build.txt | sha256sum | cut -c1-16)"
if [ ! -f "$VENV/.deps-$HASH" ]; then
  say "pip install the ROS build and runtime wheels (cp312)"
  "${PIP[@]}" install -r "$WORK/ros_runtime.txt" -r requirements/build.txt numpy
  rm -f "$VENV"/.deps-*
  touch "$VENV/.deps-$HASH"
fi
"$VPY" scripts/fix_ros_wheel_cmake.py

# -- 2. the wheels ---------------------------------------------------------------------------------------
rm -rf "$BUNDLE"
mkdir -p "$BUNDLE/whl" "$BUNDLE/video"
say "building the vidaction_ros cp312 wheel (CMake dir $WORK/cmake312)"
VIDACTION_CMAKE_BUILD_DIR="$ROOT/$WORK/cmake312" PATH="$VENV/bin:$PATH" AMENT_PREFIX_PATH="$ROOT/$VENV" \
  "${PIP[@]}" wheel --no-build-isolation --no-deps -w "$BUNDLE/whl" .

# The runtime closure is what a venv with only the ROS runtime lines gets (the build venv also holds the
# generators and ament_cmake, which the machine does not need).
RT="$WORK/venv312-runtime"
if [ ! -f "$RT/.deps-$HASH" ]; then
  say "the ROS runtime closure (a cp312 venv with requirements/runtime.txt's ROS lines only)"
  rm -rf "$RT"
  "$PY312" -m venv "$RT"
  "$RT/bin/python" -m pip install --disable-pip-version-check -q -r "$WORK/ros_runtime.txt"
  touch "$RT/.deps-$HASH"
fi
"$RT/bin/python" -m pip freeze --disable-pip-version-check | grep -E '^ros-' > "$WORK/ros_closure.txt"
"${PIP[@]}" download --no-deps --only-binary=:all: -d "$BUNDLE/whl" -r "$WORK/ros_closure.txt"

say "hnswlib from source, portable (HNSWLIB_NO_NATIVE=1: no -march=native), stripped"
HNSW_REQ="$(grep -E '^hnswlib' requirements/runtime.txt | sed 's/[[:space:]]*#.*//')"
rm -rf "$WORK/hnswlib"
HNSWLIB_NO_NATIVE=1 "${PIP[@]}" wheel --no-deps --no-binary hnswlib -w "$WORK/hnswlib" "$HNSW_REQ"
( cd "$WORK/hnswlib" && whl=$(ls hnswlib-*.whl) && "$ROOT/$VPY" -m wheel unpack -d unpacked "$whl" >/dev/null &&
  find unpacked -name '*.so' -exec strip --strip-unneeded {} + &&
  rm "$whl" && "$ROOT/$VPY" -m wheel pack -d . unpacked/* >/dev/null )
cp "$WORK"/hnswlib/hnswlib-*.whl "$BUNDLE/whl/"

say "iceoryx2 (abi3)"
IOX_REQ="$(grep -E '^iceoryx2' requirements/runtime.txt | sed 's/[[:space:]]*#.*//')"
"${PIP[@]}" download --no-deps --only-binary=:all: -d "$BUNDLE/whl" "$IOX_REQ"

cp "$VTEST" "$BUNDLE/video/"
WHEELS=$(ls "$BUNDLE/whl" | wc -l)
TREE_KB=$(git ls-files -z | xargs -0 du -ck 2>/dev/null | tail -1 | cut -f1)
BUNDLE_KB=$(du -sk "$BUNDLE" | cut -f1)
say "done: $WHEELS wheels; bundle $((BUNDLE_KB / 1024)) MiB + working tree $((TREE_KB / 1024)) MiB" \
    "(a device call carries at most 64 MiB)"
[ $((BUNDLE_KB + TREE_KB)) -lt $((64 * 1024)) ] || die "too big for one device call"
