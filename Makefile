# cargohold — two set-up commands: `make demo` and `make test`. Everything else is a helper.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
PYTEST_ARGS ?=

.PHONY: install engine images lint unit test demo bench bench-inventory bench-audit bench-docker bench-repository bench-remote faults help

help:
	@echo "make demo   - bootstrap (venv, engine, images) and run the sample stateful app + inventory"
	@echo "make test   - install everything and run lint, type checks and the whole test suite"
	@echo "make faults - the full fault campaign (kill -9, byte flips, full disk, ...; docs/RELIABILITY.md, <= 20 min)"

$(STAMP): pyproject.toml
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { apt-get update -qq && apt-get install -y -qq python3-venv && $(PYTHON) -m venv $(VENV); }
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@rm -f $(VENV)/.installed-*; touch $(STAMP)

install: $(STAMP)

engine: install
	$(BIN)/python -m cargohold.testbed engine

images: engine
	$(BIN)/python -m cargohold.testbed images

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

unit: install
	$(BIN)/pytest -q tests/unit tests/contract $(PYTEST_ARGS)

test: lint images
	$(BIN)/pytest -q $(PYTEST_ARGS)

demo: images
	$(BIN)/python scripts/demo.py

# Benchmarks (docs/PERFORMANCE.md); bench-docker, bench-repository and bench-remote need ../shared/bench/make_corpus.py
bench-inventory: images
	$(BIN)/python bench/bench_inventory.py

bench-audit: images
	$(BIN)/python bench/bench_audit.py

bench-docker: images
	$(BIN)/python bench/bench_docker.py

bench-repository: install
	$(BIN)/python bench/bench_repository.py

# S3 (the test bed's Ceph RGW) and SFTP (its sshd) against restic on the same servers; root installs what is missing
bench-remote: install
	$(BIN)/python bench/bench_remote.py

bench: bench-inventory bench-audit bench-docker bench-repository bench-remote

# The full fault campaign (docs/RELIABILITY.md): root for the loop-mounted full-disk campaign, a Docker
# engine for the copy campaign (without one a backup of a restored tree stands in); SEED=N to vary it
SEED ?= 1
faults: install
	$(BIN)/python bench/faults.py --seed $(SEED) --out bench/results/faults-seed$(SEED).json
