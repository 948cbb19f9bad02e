# One entry point for people and CI. Every target sets up what it needs (scripts/setup-env.sh).
SHELL := /bin/bash
PY := .venv/bin/python
export PATH := $(CURDIR)/.tools/bin:$(CURDIR)/.venv/bin:$(PATH)

.PHONY: setup proto lint test demo

setup:
	@bash scripts/setup-env.sh

## proto: regenerate the gRPC stubs from runtime/bloomz_runtime/proto/*.proto
proto: setup
	$(PY) scripts/gen_proto.py

## lint: ruff + mypy
lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

## test: lint, then the whole test suite (unit, integration, end-to-end on CPU)
test: lint
	$(PY) -m pytest -q
