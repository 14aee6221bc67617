#!/usr/bin/env bash
# README command 2: set up (idempotent) and run the whole test suite.
# Extra arguments go to pytest, e.g. scripts/test.sh -k policy -x
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh --with mqtt  # the MQTT tests run a real mosquitto
exec .venv/bin/python -m pytest -q "$@"
