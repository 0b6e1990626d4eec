#!/usr/bin/env bash
# Run the test suite against the INSTALLED package: scripts/test.sh [pytest args...]
#   e.g. scripts/test.sh test/unit -x      scripts/test.sh -m "not slow"
# setup_env.sh (re)installs the current tree into .venv first (seconds when nothing changed).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup_env.sh"
# shellcheck disable=SC1091
source "$ROOT/scripts/env.sh"

# The source tree's vidaction_ros/ has no msg/ or srv/ (rosidl generates them at build time), so
# it must never shadow the installed package:
#  - the `pytest` executable (not `python -m pytest`, which puts the cwd on sys.path),
#  - --import-mode=importlib (also in pytest.ini): no test or root dir inserted into sys.path,
#  - PYTHONSAFEPATH=1: `python -m ...` / `python -c ...` in subprocesses the tests start do not
#    put their cwd on sys.path either,
#  - and the repo root taken out of PYTHONPATH.
export PYTHONSAFEPATH=1
if [ -n "${PYTHONPATH:-}" ]; then
  PYTHONPATH="$(printf '%s' "$PYTHONPATH" | tr ':' '\n' |
    grep -v -x -e "$ROOT" -e "$ROOT/" -e '.' -e '' | paste -sd: || true)"
  export PYTHONPATH
fi
where="$(cd / && python -c 'import vidaction_ros, os; print(os.path.dirname(vidaction_ros.__file__))')"
case "$where" in
  "$VIRTUAL_ENV"/*) ;;
  *) echo "[test.sh] ERROR: vidaction_ros imports from $where, not from $VIRTUAL_ENV" >&2; exit 1 ;;
esac
echo "[test.sh] vidaction_ros from $where; ROS_DOMAIN_ID=$ROS_DOMAIN_ID"

cd "$ROOT"
rc=0
pytest --import-mode=importlib "$@" || rc=$?
if [ "$rc" -eq 5 ]; then
  echo "[test.sh] ERROR: pytest collected no tests (exit 5); treating that as a failure" >&2
fi
exit "$rc"
