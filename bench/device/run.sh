#!/usr/bin/env bash
# On the GPU machine, in one device call (after `bash bench/device/build_bundle.sh` here):
#
#   run(command="bash bench/device/run.sh", carry=["build/device/bundle"], timeout_s=600)
#
# Installs the bundle into a scratch prefix (the machine's own Python 3.12 with its CUDA torch), builds a
# random-weight CLIP with the ViT-B/32 image tower (timing only), then runs, each step under its own time limit,
# writing JSON and logs to $OUT:
#   smoke.json            imports, an Action's DDS round trip, what torch sees
#   e2e_live.json         bench/e2e.py, torch_cuda, composed, live 10 Hz, 300 frames
#   e2e_lockstep.json     the same, --lockstep
#   embed.json            bench/embed.py GPU rows (torch_cuda, tower_cuda)
#   cuda_frames.json      bench/cuda_frames.py, 300 frames, two processes
#   cuda_tests.xml        pytest: the CUDA tests (test_cuda_frames, test_torch_cuda_path, test_device_scoring)
#   steps.json            every step: exit code and seconds
# A step that fails is recorded and the next one runs. The whole takes ~6 min on the H200.
#   --smoke      install and smoke only
#   --cpu-check  every step, but the pipeline on the CPU and 20 frames: the script's own check on a machine
#                without a GPU (PY=a Python 3.12 with torch); the CUDA rows, benches and tests skip or fail there
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BUNDLE="$ROOT/build/device/bundle"
OUT="${OUT:-$ROOT/build/device/out}"
PY="${PY:-python3}"
SMOKE_ONLY=0
FRAMES=300
DEVICE_ARGS=()
case "${1:-}" in
  --smoke) SMOKE_ONLY=1 ;;
  --cpu-check) FRAMES=20; DEVICE_ARGS=(--device cpu) ;;
esac
mkdir -p "$OUT"
say() { printf '[device] %s\n' "$*"; }
[ -d "$BUNDLE/whl" ] || { say "no bundle at $BUNDLE: run bash bench/device/build_bundle.sh here and carry it"; exit 2; }
"$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' ||
  { say "$PY is not Python 3.12: the bundle's wheels are cp312"; exit 2; }

# -- install: a scratch prefix beside the machine's own packages ---------------------------------------------
PREFIX="$(mktemp -d /tmp/vidaction_prefix.XXXXXX)"
say "installing $(ls "$BUNDLE/whl" | wc -l) wheels into $PREFIX"
"$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps --ignore-installed --prefix "$PREFIX" \
  "$BUNDLE"/whl/*.whl || { say "install failed"; exit 2; }
SITE="$PREFIX/lib/python3.12/site-packages"
export PYTHONPATH="$SITE"
export AMENT_PREFIX_PATH="$PREFIX"
LIBS="$PREFIX/lib"
for d in "$SITE"/ros_*.libs "$SITE"/*.libs; do [ -d "$d" ] && LIBS="$LIBS:$d"; done
export LD_LIBRARY_PATH="$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# The ros wheels' .pth bootstrapper would re-execute Python with the library paths of another venv.
export _ROS_WHEELS_BOOTSTRAP_COMPLETE=1
export RMW_IMPLEMENTATION=rmw_fastrtps_cpp
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-$(( $$ % 90 + 5 ))}"

STEPS="$OUT/steps.txt"
: > "$STEPS"
# step NAME LIMIT_S COMMAND...: run from /tmp (so the installed package, not the source tree, is imported),
# output to $OUT/NAME.log, exit code and seconds to steps.txt.
step() {
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  say "$name (limit ${limit} s)"
  (cd /tmp && timeout --kill-after=10 "$limit" "$@") > "$OUT/$name.log" 2>&1
  local rc=$?
  printf '%s %s %s\n' "$name" "$rc" "$((SECONDS - t0))" >> "$STEPS"
  say "$name: exit $rc after $((SECONDS - t0)) s"
  tail -n 3 "$OUT/$name.log"
  return 0
}

step smoke 60 "$PY" "$ROOT/bench/device/smoke.py"
grep -h '^{' "$OUT/smoke.log" > "$OUT/smoke.json" || true
if [ "$SMOKE_ONLY" = 0 ]; then
  MODEL=/tmp/vidaction_clip_b32_random          # 336 MB: not under $OUT, whose files come back
  step model 120 "$PY" -c "import sys; sys.path.insert(0, '$ROOT/test'); from pathlib import Path; import tiny_models; \
tiny_models.build('clip', Path('$MODEL'), vision_tower='b32')"
  VIDEO="$BUNDLE/video/vtest.avi"
  COMMON=(--backend torch_cuda "${DEVICE_ARGS[@]}" --model_path "$MODEL" --source "$VIDEO" --frames "$FRAMES")
  step e2e_live 120 "$PY" "$ROOT/bench/e2e.py" "${COMMON[@]}" --json "$OUT/e2e_live.json"
  step e2e_lockstep 120 "$PY" "$ROOT/bench/e2e.py" "${COMMON[@]}" --lockstep --json "$OUT/e2e_lockstep.json"
  step embed 120 "$PY" "$ROOT/bench/embed.py" --rows torch_cuda,tower_cuda --towers b32 --budget-s 10 \
    --video "$VIDEO" --json "$OUT/embed.json"
  step cuda_frames 90 "$PY" "$ROOT/bench/cuda_frames.py" --frames 300 --json "$OUT/cuda_frames.json"
  export VIDACTION_TEST_VIDEO="$VIDEO"           # test/conftest.py's demo video (no opencv-doc there)
  step cuda_tests 150 "$PY" -m pytest -q -p no:cacheprovider -c "$ROOT/pytest.ini" --rootdir "$ROOT" \
    "$ROOT/test/unit/test_cuda_frames.py" "$ROOT/test/unit/test_torch_cuda_path.py" \
    "$ROOT/test/unit/test_device_scoring.py" \
    --junitxml "$OUT/cuda_tests.xml"
fi
"$PY" - "$STEPS" "$OUT/steps.json" <<'EOF'
import json, sys
rows = [line.split() for line in open(sys.argv[1]) if line.strip()]
json.dump({name: {'exit_code': int(rc), 'seconds': int(s)} for name, rc, s in rows}, open(sys.argv[2], 'w'), indent=1)
EOF
say "done: $(awk '$2 == 0' "$STEPS" | wc -l) of $(wc -l < "$STEPS") steps passed; results in $OUT"
rm -rf "$PREFIX"
awk '$2 != 0 {bad = 1} END {exit bad}' "$STEPS"
