# The two commands a newcomer needs: `make serve` and `make test`. Both install first.
SHELL := /bin/bash
VENV ?= .venv
PYTHON := $(VENV)/bin/python
# make test's workers (pytest-xdist, a module to each): the end-to-end tests mostly wait on their servers. One worker
# runs every module of the session's server (tests/conftest.py); with two, the suite peaked at 17.5 of 24 GB here.
TEST_WORKERS ?= 2

.PHONY: help install install-dev demo examples serve test test-fast bench bench-scene slow-clients soak overload stages image-check gpu-pack gpu-check lint format protos clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

install:  ## what serving needs: Java 17 (if missing), the Python environment in .venv/, this project's packages and the batch client (editable)
	@scripts/install

install-dev:  ## what serving needs and, on top, what only the tests need: pytest and ruff, TF Serving's client (.venv-tfclient/), kubectl and .venv-deploy, the client's geo extra, PostgreSQL and PostGIS
	@scripts/install --dev

demo: install  ## build model_store/digits.mar (the demo model, trained offline) if missing
	@scripts/build-demo

examples: install  ## archive the docs' example models into model_store/: tabular, prices, collab, reviews (the tests' small Learners, trained in seconds)
	@$(PYTHON) -m harness.examples

serve: demo  ## install, build the demo, and serve every archive in model_store/
	@scripts/serve

test: install-dev  ## the whole test suite: in-process tests, then real TorchServe, shim and tools end to end
	@$(PYTHON) -m pytest -n $(TEST_WORKERS) --dist loadfile

test-fast: install-dev  ## the in-process tests alone: no server, no Java (under a minute)
	@$(PYTHON) -m pytest -m "not e2e"

bench: install  ## benchmark table: ceilings, in-process baselines, TorchServe, the shim (QUICK=1: short mode; DEVICE=cuda)
	@$(PYTHON) -m benchmarks.bench $(if $(QUICK),--quick) $(if $(DEVICE),--device $(DEVICE))

bench-scene: install-dev  ## predict-batch over a scene beside a folder (rows 7, 7s), then a SIDE x SIDE scene's memory (SIDE=20000)
	@$(PYTHON) -m benchmarks.scenes --big $(or $(SIDE),20000)

slow-clients: install  ## ordinary clients alone, then beside 500 slow and 1,000 idle connections, REST and gRPC (MODELS="free resnet", FRONTS="direct proxy")
	@$(PYTHON) -m benchmarks.slow_clients --model $(or $(MODELS),free) --fronts $(or $(FRONTS),proxy)

soak: install  ## minutes of checked load through the shim (SOAK_S=seconds, default 300)
	@SOAK_S=$(or $(SOAK_S),300) $(PYTHON) -m benchmarks.soak

overload: install  ## one server at 3x its capacity (gRPC and REST storms, 5 s deadlines): goodput, refusals, recovery; predict-batch adaptive vs fixed concurrency (QUICK=1: short)
	@$(PYTHON) -m benchmarks.overload $(if $(QUICK),--quick)

stages: demo  ## where each request's time went under a known load, from the server's own metrics: docs/observability.md's figure
	@$(PYTHON) -m benchmarks.stages

image-check: demo  ## build the CPU image, run it, check a chip-n-scale request, remove it (minutes; not in make test)
	@scripts/image-check $(if $(DOCKERFILE),--dockerfile $(DOCKERFILE))

gpu-pack: install  ## put what an offline GPU machine needs for gpu-check's stage one into build/gpu-pack/ (under 64 MiB)
	@PYTHONPATH=. $(PYTHON) -m harness.gpu_pack

gpu-check:  ## on a machine with an NVIDIA GPU: stage one (the core, from build/gpu-pack/), or with TorchServe installed, serve on it (not in CI)
	@scripts/gpu-check

lint: install-dev  ## ruff check and ruff format --check over every Python folder
	@$(PYTHON) -m ruff check . && $(PYTHON) -m ruff format --check .

format: install-dev  ## ruff format and ruff check --fix
	@$(PYTHON) -m ruff format . && $(PYTHON) -m ruff check --fix .

protos: install-dev  ## regenerate the gRPC code (client/fastai_serving_protos/*_pb2*.py: TF Serving's and the Open Inference Protocol's) from its .proto files, after editing them
	@$(PYTHON) -m harness.protos

clean:  ## remove build output, logs and archives (keeps .venv/)
	rm -rf build logs model_store/*.mar
