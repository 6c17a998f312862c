# llmctl: `make demo` and `make test` do all their own set-up on a fresh machine.
#
#   make demo                     the whole pipeline (pipelines/toy.yaml) on the bundled example data + report
#   make test                     lint, import layers, then the whole test suite (what CI runs)
#   make test-fast                the quick tier (no end-to-end tests), under 2 minutes
#   make eval                     one stage (and whatever it needs that is out of date); likewise
#                                 make filter | tokenize | pretrain | sft | grpo | reward | dpo | report
#   make eval PIPELINE=pipelines/small.yaml OUT=out/small    another pipeline, another run root
#   make examples-readme          a fresh demo run, then examples/README.md's figures rewritten from it
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
LLMCTL := $(VENV)/bin/llmctl
STAMP := $(VENV)/.llmctl-installed
# On a machine without CUDA, install a CPU build of torch first (an unpinned torch from PyPI is
# a multi-GB CUDA build). Elsewhere, e.g.: make install TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
TORCH_CPU ?= torch==2.13.0
TORCH_PIP_ARGS ?=
PIPELINE ?= pipelines/toy.yaml
OUT ?= out/demo
RUN = $(LLMCTL) run $(PIPELINE) -o $(OUT)

.PHONY: install demo test test-fast lint browser report clean filter tokenize pretrain sft grpo reward dpo eval examples-readme

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@if ! $(PY) -c "import torch" >/dev/null 2>&1; then \
	  if command -v nvidia-smi >/dev/null 2>&1; then $(PY) -m pip install -q "torch>=2.4"; \
	  else $(PY) -m pip install -q "$(TORCH_CPU)" $(TORCH_PIP_ARGS); fi; fi
	$(PY) -m pip install -q -e ".[test]"
	@touch $(STAMP)

# The whole pipeline on the bundled example data (examples/: a real crawl file, TinyStories,
# GSM8K, HH-RLHF and MMLU slices), then the HTML report. A few minutes on 2 CPU cores (README.md).
demo: install
	$(RUN)
	$(LLMCTL) report $(OUT)

# Every stage of the demo run again (--force), then examples/README.md's figure blocks rewritten
# from what it printed (scripts/examples_figures.py; tests/test_toy_pipeline.py checks them).
examples-readme: install
	$(RUN) --force
	$(PY) scripts/examples_figures.py $(OUT)

# The test suite, after the layout and style checks. pytest's exit code 5 (no tests collected)
# fails this target like any other.
test: install lint browser
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -q

# The report's browser test needs Chromium: apt-get installs it where this runs as root and it is
# missing (about a minute); elsewhere that one test says how to get it and is skipped.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	      echo "installing chromium (apt-get) for the report's browser test"; \
	      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	    else echo "note: no chromium; the report's browser test will be skipped (apt-get install chromium)"; fi; }

# The quick tier for the edit-test loop (under 2 minutes on 2 cores): the suite without the
# end-to-end modules marked `slow`. CI runs `make test`, all of it.
test-fast: install
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -q -m "not slow"

# ruff (lint and format) and the import-layer contracts in pyproject.toml ([tool.importlinter]).
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

# One recipe per stage; each target is the stage's manifest, so `make eval` re-runs only what
# is out of date (and `llmctl run` itself skips a stage whose config and inputs did not change).
filter: $(OUT)/filter/_manifest.json
tokenize: $(OUT)/tokens/_manifest.json
pretrain: $(OUT)/pretrain/_manifest.json
sft: $(OUT)/sft/_manifest.json
grpo: $(OUT)/grpo/_manifest.json
reward: $(OUT)/reward/_manifest.json
dpo: $(OUT)/dpo/_manifest.json
eval: $(OUT)/eval/_manifest.json
report: eval
	$(LLMCTL) report $(OUT)

$(OUT)/filter/_manifest.json: $(STAMP) $(PIPELINE)
	$(RUN) --only filter && touch $@
$(OUT)/tokenizer/_manifest.json: $(OUT)/filter/_manifest.json
	$(RUN) --only tokenizer && touch $@
$(OUT)/tokens/_manifest.json: $(OUT)/filter/_manifest.json $(OUT)/tokenizer/_manifest.json
	$(RUN) --only tokens && touch $@
$(OUT)/pretrain/_manifest.json: $(OUT)/tokens/_manifest.json
	$(RUN) --only pretrain && touch $@
$(OUT)/sft_data/_manifest.json: $(STAMP) $(PIPELINE)
	$(RUN) --only sft_data && touch $@
$(OUT)/sft/_manifest.json: $(OUT)/sft_data/_manifest.json $(OUT)/pretrain/_manifest.json
	$(RUN) --only sft && touch $@
$(OUT)/grpo/_manifest.json: $(OUT)/sft/_manifest.json
	$(RUN) --only grpo && touch $@
$(OUT)/prefs/_manifest.json: $(STAMP) $(PIPELINE)
	$(RUN) --only prefs && touch $@
$(OUT)/reward/_manifest.json: $(OUT)/prefs/_manifest.json $(OUT)/sft/_manifest.json
	$(RUN) --only reward && touch $@
$(OUT)/dpo/_manifest.json: $(OUT)/prefs/_manifest.json $(OUT)/sft/_manifest.json
	$(RUN) --only dpo && touch $@
$(OUT)/eval/_manifest.json: $(OUT)/dpo/_manifest.json $(OUT)/reward/_manifest.json $(OUT)/tokens/_manifest.json
	$(RUN) --only eval && touch $@

clean:
	rm -rf out .pytest_cache
