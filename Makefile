# llmctl: `make demo` and `make test` do all their own set-up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
LLMCTL := $(VENV)/bin/llmctl
STAMP := $(VENV)/.llmctl-installed
# On a machine without CUDA, install a CPU build of torch first (an unpinned torch from PyPI is
# a multi-GB CUDA build). Elsewhere, e.g.: make install TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
TORCH_CPU ?= torch==2.13.0
TORCH_PIP_ARGS ?=
OUT ?= out/demo
PIPELINE ?= pipelines/toy.yaml

.PHONY: install demo test filter clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@if ! $(PY) -c "import torch" >/dev/null 2>&1; then \
	  if command -v nvidia-smi >/dev/null 2>&1; then $(PY) -m pip install -q "torch>=2.4"; \
	  else $(PY) -m pip install -q "$(TORCH_CPU)" $(TORCH_PIP_ARGS); fi; fi
	$(PY) -m pip install -q -e ".[test]"
	@touch $(STAMP)

# The whole pipeline on the bundled example corpus (examples/crawl: a slice of a real crawl).
demo: install
	$(LLMCTL) filter examples/crawl -o $(OUT)/filtered

# The test suite. pytest's exit code 5 (no tests collected) fails this target like any other.
test: install
	$(PY) -m pytest -q

filter: $(OUT)/filtered/_manifest.json
$(OUT)/filtered/_manifest.json: install
	$(LLMCTL) filter examples/crawl -o $(OUT)/filtered

clean:
	rm -rf out .pytest_cache
