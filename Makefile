# Two commands on a fresh machine:  make demo  |  make test
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast test-shuffled lint assets docs

# the order test-shuffled runs the fast suite in: a number, or random
SEED ?= 20261203

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev,examples,quantization,docs]"
	touch $(STAMP)

assets: $(STAMP)
	$(BIN)/python examples/assets.py

demo: $(STAMP)
	$(BIN)/python examples/sentiment/run.py

test: $(STAMP)
	$(BIN)/python examples/assets.py --only minilm mr wnut16 smollm2 e2e dinov2
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

test-shuffled: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -m "not slow" -q -p randomly --randomly-seed=$(SEED)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir site
