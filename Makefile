# The two commands of the README: `make demo` and `make test`. Both do all set-up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
MODELS_DIR ?= models
# torch is pinned on every pip line: without it pip may pull a multi-GB CUDA build.
TORCH := torch==2.13.0
PIP := $(BIN)/pip install --disable-pip-version-check -q
export OMP_NUM_THREADS := 1
export NEXTGPT_MODELS_DIR := $(abspath $(MODELS_DIR))

.PHONY: setup models demo up test lint format protos clean help

help:
	@echo "make demo   - set up, build the tiny profile, run any-to-any requests, media in out/demo/"
	@echo "make test   - set up and run the whole test suite"
	@echo "make up     - run the local cluster (Redis, services, gateway) until Ctrl-C"
	@echo "make lint   - ruff"
	@echo "make clean  - remove the venv, models and outputs"

setup: $(VENV)/.stamp-setup

$(VENV)/.stamp-setup: requirements/core.txt requirements/nodeps.txt requirements/test.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) $(TORCH) -r requirements/core.txt -r requirements/test.txt
	$(PIP) --no-deps -r requirements/nodeps.txt
	$(PIP) --no-deps --no-build-isolation -e .
	@# PyPI's torchvision/torchaudio/triton link CUDA and break transformers imports beside the CPU torch.
	@! $(BIN)/pip list 2>/dev/null | grep -iE '^(torchvision|torchaudio|torchcodec|triton) ' \
		|| (echo "torchvision/torchaudio/torchcodec/triton must not be installed in $(VENV)"; exit 1)
	touch $@

models: setup
	$(BIN)/nextgpt init-tiny $(MODELS_DIR)

up: models
	$(BIN)/nextgpt up

demo: models
	$(BIN)/nextgpt demo --out out/demo

test: models lint
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

protos: setup
	$(BIN)/python scripts/gen_protos.py

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) $(MODELS_DIR)/tiny out
