# driftloop: `make demo` and `make test` set everything up themselves.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo up test test-kafka test-chaos test-unit test-integration test-e2e lint format contracts bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), sys.version' || { echo "driftloop needs Python 3.11+ (make PYTHON=...)"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/driftloop demo

up: $(STAMP)
	$(BIN)/driftloop up

# Two tests at a time (pytest-xdist, each worker with its own broker): most of the suite waits on brokers and
# group joins rather than on the CPU.
TEST_WORKERS ?= 2

test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS)

# The second broker tier: the integration and end-to-end suites on Apache Kafka (KRaft), jars fetched with Maven.
test-kafka: $(STAMP)
	DRIFTLOOP_TEST_BROKER=kafka $(BIN)/python -m pytest -n $(TEST_WORKERS) tests/integration tests/e2e

# Kills and outages on a whole stack under load, on the broker DRIFTLOOP_TEST_BROKER names (tansu or kafka).
test-chaos: $(STAMP)
	$(BIN)/python -m pytest tests/chaos -m chaos

test-unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit contracts libs services

test-integration: $(STAMP)
	$(BIN)/python -m pytest tests/integration

test-e2e: $(STAMP)
	$(BIN)/python -m pytest tests/e2e

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy contracts/driftloop libs/driftloop services/driftloop

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

contracts: $(STAMP)
	$(BIN)/driftloop contracts export

# BROKER=kafka measures on a local Apache Kafka instead of the embedded broker.
BROKER ?= tansu
bench: $(STAMP)
	$(BIN)/python -m tests.bench --broker $(BROKER)
	$(BIN)/python -m tests.bench.bench_pipeline
	$(BIN)/python -m tests.bench.bench_offline
	$(BIN)/python -m tests.bench.bench_soak --broker $(BROKER)
	$(BIN)/python -m tests.bench.bench_gate
	$(BIN)/python -m tests.bench.bench_adapt --broker $(BROKER)

clean:
	rm -rf .driftloop
