#!/usr/bin/env bash
# Run a command inside the built environment: the venv, the wheels' ament prefix and
# this package's colcon install (as `source install/setup.bash` does on a ROS distro).
set -eo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
source "$repo/.venv/bin/activate"
set +u
# shellcheck disable=SC1091
source "$repo/install/setup.bash"
exec "$@"
