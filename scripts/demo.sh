#!/usr/bin/env bash
# GreenGate demo: a whole fleet on this machine, offline (docs/demo.md).
#
# README command 1 (also `make demo`): sets up the machine first (idempotent, with
# Mosquitto), then runs scripts/demo.py: Mosquitto on the generated TLS/ACL
# configuration, the fleet server (SQLite) with an ingest worker, and three simulated
# kiosks in three districts reading camera-like frames (green and red cases), one of
# them losing power and coming back. It prints the dashboard URL and a one-time admin
# login; Ctrl-C stops everything and removes the temporary directory.
#
#   bash scripts/demo.sh [--duration SECONDS] [--outage-after S] [--outage-for S] ...
#
# KEEP_DEMO_DIR=1 keeps the temporary directory (logs, database, frames).
# GREENGATE_DEMO_DURATION=SECONDS is the same as --duration.
# Exit status: 0 stopped by Ctrl-C / SIGTERM / --duration; 1 a step failed; 2 bad usage.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh --with mqtt

if [[ ! -x .venv/bin/python ]]; then
    echo "demo: .venv/bin/python not found - run 'bash scripts/setup.sh --with mqtt' first" >&2
    exit 2
fi
# exec: Ctrl-C and SIGTERM reach the orchestrator directly, which stops its children.
exec .venv/bin/python scripts/demo.py "$@"
