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
# group joins rather than on the CPU. The chaos suite runs after, alone: it loads the machine on purpose.
TEST_WORKERS ?= 2

# Every test, on the embedded broker (or the one DRIFTLOOP_TEST_BROKER names).
test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS)
	$(BIN)/python -m pytest tests/chaos -m chaos

# The second broker tier: the integration, end-to-end and chaos suites on Apache Kafka (KRaft), jars from Maven.
test-kafka: $(STAMP)
	DRIFTLOOP_TEST_BROKER=kafka $(BIN)/python -m pytest -n $(TEST_WORKERS) tests/integration tests/e2e
	DRIFTLOOP_TEST_BROKER=kafka $(BIN)/python -m pytest tests/chaos -m chaos

# Kills and outages on a whole stack under load alone, on the broker DRIFTLOOP_TEST_BROKER names (tansu or kafka).
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
