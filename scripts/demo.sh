#!/usr/bin/env bash
# Run the demo from the installed package: scripts/demo.sh [demo args...]
# (setup_env.sh builds/installs the current tree into .venv first; seconds when unchanged)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup_env.sh"
# shellcheck disable=SC1091
source "$ROOT/scripts/env.sh"
# Outside the repo root, so `python -m` imports the installed package (with generated msg/),
# not the source tree's vidaction_ros/. Relative paths among the args are made absolute first.
args=()
abspath() { printf '%s/%s' "$(cd "$(dirname "$1")" && pwd)" "$(basename "$1")"; }
for a in "$@"; do
  if [[ "$a" != -* && "$a" != /* && -e "$a" ]]; then
    a="$(abspath "$a")"
  elif [[ "$a" == --*=* && "${a#*=}" != /* && -e "${a#*=}" ]]; then
    a="${a%%=*}=$(abspath "${a#*=}")"
  fi
  args+=("$a")
done
cd /
exec python -m vidaction_ros.tools.demo "${args[@]}"
