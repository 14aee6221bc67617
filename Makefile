# GreenGate developer entry points. Every target that needs Python runs
# `setup` first; setup is idempotent and takes ~0.2 s when nothing changed.
#
#   make test PYTEST_ARGS='-k base45 -x'
#   make setup WITH=mqtt          # extra system package groups (scripts/setup.sh --with)
#   make setup SETUP_ARGS=--force # any other scripts/setup.sh flags

SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python

PYTEST_ARGS ?=
SETUP_ARGS  ?=
WITH        ?=

.PHONY: setup test demo bench clean distclean

setup:
	bash scripts/setup.sh $(if $(strip $(WITH)),--with '$(strip $(WITH))') $(SETUP_ARGS)

test:
	bash scripts/test.sh $(PYTEST_ARGS)

demo:
	bash scripts/demo.sh

# Every benchmark in one run, then bench/REPORT.md (~12 min on 2 cores; run it on a
# quiet machine). One benchmark: .venv/bin/python -m bench NAME --help
BENCH_ARGS ?=

bench: setup
	$(PY) -m bench report $(BENCH_ARGS)

# Build/test leftovers. Keeps .venv (use distclean) and var/ (runtime data).
clean:
	rm -rf build dist .pytest_cache .hypothesis bench/out
	find . -path ./$(VENV) -prune -o \( -name __pycache__ -o -name '*.egg-info' \) -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
