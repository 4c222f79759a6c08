# The two commands a newcomer needs: `make serve` and `make test`. Both install first.
SHELL := /bin/bash
VENV ?= .venv
PYTHON := $(VENV)/bin/python

.PHONY: help install demo serve test test-fast bench slow-clients soak image-check gpu-check lint format protos clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

install:  ## Java 17 (if missing), the Python environment in .venv/, this project's packages (editable), TF Serving's client for the tests (.venv-tfclient/)
	@scripts/install

demo: install  ## build model_store/digits.mar (the demo model, trained offline) if missing
	@scripts/build-demo

serve: demo  ## install, build the demo, and serve every archive in model_store/
	@scripts/serve

test: install  ## the whole test suite: in-process tests, then real TorchServe, shim and tools end to end
	@$(PYTHON) -m pytest

test-fast: install  ## the in-process tests alone: no server, no Java (under a minute)
	@$(PYTHON) -m pytest -m "not e2e"

bench: install  ## benchmark table: ceilings, in-process baselines, TorchServe, the shim (QUICK=1: short mode; DEVICE=cuda)
	@$(PYTHON) benchmarks/bench.py $(if $(QUICK),--quick) $(if $(DEVICE),--device $(DEVICE))

slow-clients: install  ## ordinary clients alone, then beside 500 slow and 1,000 idle connections, REST and gRPC (MODELS="free resnet", FRONTS="direct proxy")
	@$(PYTHON) benchmarks/slow_clients.py --model $(or $(MODELS),free) --fronts $(or $(FRONTS),proxy)

soak: install  ## minutes of checked load through the shim (SOAK_S=seconds, default 300)
	@SOAK_S=$(or $(SOAK_S),300) $(PYTHON) benchmarks/soak.py

image-check: demo  ## build the CPU image, run it, check a chip-n-scale request, remove it (minutes; not in make test)
	@scripts/image-check $(if $(DOCKERFILE),--dockerfile $(DOCKERFILE))

gpu-check: install  ## on a machine with an NVIDIA GPU: serve on it, compare with the CPU, print the GPU benchmark (not in CI)
	@scripts/gpu-check

lint: install  ## ruff check and ruff format --check over every Python folder
	@$(PYTHON) -m ruff check . && $(PYTHON) -m ruff format --check .

format: install  ## ruff format and ruff check --fix
	@$(PYTHON) -m ruff format . && $(PYTHON) -m ruff check --fix .

protos: install  ## regenerate TF Serving's gRPC code (client/fastai_serving_protos/*_pb2*.py) from its .proto files, after editing them
	@$(PYTHON) -m fastai_serving_scripts.protos

clean:  ## remove build output, logs and archives (keeps .venv/)
	rm -rf build logs model_store/*.mar
