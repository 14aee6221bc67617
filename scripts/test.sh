#!/usr/bin/env bash
# README command 2: set up (idempotent) and run the whole test suite.
# Extra arguments go to pytest, e.g. scripts/test.sh -k policy -x
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# The MQTT tests run a real mosquitto; the fleet's database tests run on SQLite and on a
# real PostgreSQL (tests/databases.py starts its own clusters; no system service is used);
# the dashboard tests drive a real headless Chromium (Debian's chromium, via Playwright).
# GREENGATE_TEST_DB=sqlite|postgresql|both (default both) picks the fleet test databases.
bash scripts/setup.sh --with mqtt,postgres,browser,lint
exec .venv/bin/python -m pytest -q "$@"
