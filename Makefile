# The README's two commands: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch and torchvision must be installed together: a torchvision built for another torch fails to import.
TORCH_PAIR := torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: demo demo-card test test-slow test-all lint format install install-dev clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet $(TORCH_PAIR)
	$(BIN)/pip install --quiet -e .
	touch $@

$(DEV_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

install: $(STAMP)
install-dev: $(DEV_STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python recipes/demo.py

# The demo again, also refreshing the tracked catalogue card model_cards/digits-funmatch/.
demo-card: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python recipes/demo.py --update-catalogue-card

test: $(DEV_STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

test-slow: $(DEV_STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m slow

test-all: $(DEV_STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "slow or not slow"

lint: $(DEV_STAMP)
	$(BIN)/ruff check hf_distill recipes tests benchmarks
	$(BIN)/ruff format --check hf_distill recipes tests benchmarks

format: $(DEV_STAMP)
	$(BIN)/ruff format hf_distill recipes tests benchmarks
	$(BIN)/ruff check --fix hf_distill recipes tests benchmarks

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache
