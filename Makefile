# Two commands on a fresh machine: `make run` and `make test`.
# Each target creates .venv and installs wr into it on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint format bench test-deps clean

run: $(STAMP)
	$(BIN)/wr serve

test: $(STAMP) test-deps
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The full load generator comes with the bench issue; for now, the cost of
# the cross-process position step against the same work in one process.
bench: $(STAMP)
	$(BIN)/python -m bench.crossprocess

# System tools some tests need (none yet); installed idempotently.
test-deps:
	@scripts/install-test-deps

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) .wr-state .pytest_cache .mypy_cache .ruff_cache
