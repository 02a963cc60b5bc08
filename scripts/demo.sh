#!/usr/bin/env bash
# One command: set up (first run only) and run the demo on the sandbox world.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/stackalign demo "$@"
