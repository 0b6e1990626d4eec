# Source this (bash or zsh): `source scripts/env.sh`. Activates the project venv and sets the
# ROS 2 environment the nodes and tests expect. Run scripts/setup_env.sh first.
#
#   ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST  DDS discovery stays on loopback
#   ROS_DOMAIN_ID                            derived from this shell's PID (1..100) unless set,
#                                            so parallel runs/CI jobs do not see each other
#   RMW_IMPLEMENTATION=rmw_fastrtps_cpp      the RMW the wheels provide
#   AMENT_PREFIX_PATH=$VIRTUAL_ENV           if unset: the ament index of the venv

_vidaction_env_src="${BASH_SOURCE[0]:-$0}"  # $0 covers zsh
_vidaction_root="$(cd "$(dirname "$_vidaction_env_src")/.." && pwd)"
if [ ! -f "$_vidaction_root/.venv/bin/activate" ]; then
  echo "env.sh: no venv at $_vidaction_root/.venv; run: bash scripts/setup_env.sh" >&2
  unset _vidaction_env_src _vidaction_root
  return 1 2>/dev/null || exit 1
fi
# shellcheck disable=SC1091
. "$_vidaction_root/.venv/bin/activate"

export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
if [ -z "${ROS_DOMAIN_ID:-}" ]; then
  export ROS_DOMAIN_ID=$(( $$ % 100 + 1 ))
fi
export RMW_IMPLEMENTATION=rmw_fastrtps_cpp
if [ -z "${AMENT_PREFIX_PATH:-}" ]; then
  export AMENT_PREFIX_PATH="$VIRTUAL_ENV"
fi
unset _vidaction_env_src _vidaction_root
