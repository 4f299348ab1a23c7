# Two commands on a fresh machine: `make run` and `make test`.
# Each target creates .venv and installs wr into it on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint format bench bench-burst bench-redis bench-pow bench-metrics test-deps clean

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

# Every server and scenario in one run, one table (bench/results/*.json);
# the bench extra brings the uvicorn baseline and the charts.
BENCH_STAMP := $(VENV)/.bench-installed

bench: $(BENCH_STAMP)
	$(BIN)/python -m bench suite

# The flash sale with 2,000,000 people, bounded to a few minutes.
bench-burst: $(BENCH_STAMP)
	$(BIN)/python -m bench burst

# Two hosts sharing a room through Redis, against the memory backend.
bench-redis: $(BENCH_STAMP)
	$(BIN)/python -m bench.redis_backend

# What metrics cost a request, in instructions counted by callgrind.
bench-metrics: $(BENCH_STAMP)
	$(BIN)/python -m bench.metrics_cost --instructions

# How long browsers take to solve the join's proof of work (Chromium).
bench-pow: $(BENCH_STAMP)
	$(BIN)/python -m bench.pow_solve

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

# System tools the tests drive (nginx, redis, chromium...), installed idempotently.
test-deps:
	@scripts/install-test-deps

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) .wr-state .pytest_cache .mypy_cache .ruff_cache
