# The two commands a newcomer needs: `make serve` and `make test`. Both install first.
SHELL := /bin/bash
VENV ?= .venv
PYTHON := $(VENV)/bin/python

.PHONY: help install demo serve test bench soak image-check lint clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

install:  ## Java 17 (if missing) and the Python environment in .venv/
	@scripts/install

demo: install  ## build model_store/digits.mar (the demo model, trained offline) if missing
	@scripts/build-demo

serve: demo  ## install, build the demo, and serve every archive in model_store/
	@scripts/serve

test: install  ## run the whole test suite (starts real TorchServe servers)
	@$(PYTHON) -m pytest

bench: install  ## benchmark table: ceiling, in-process baselines, TorchServe, the shim (QUICK=1: short mode)
	@$(PYTHON) benchmarks/bench.py $(if $(QUICK),--quick) $(if $(DEVICE),--device $(DEVICE))

soak: install  ## minutes of checked load through the shim (SOAK_S=seconds, default 300)
	@SOAK_S=$(or $(SOAK_S),300) $(PYTHON) benchmarks/soak.py

image-check: demo  ## build the CPU image, run it, check a chip-n-scale request, remove it (minutes; not in make test)
	@scripts/image-check $(if $(DOCKERFILE),--dockerfile $(DOCKERFILE))

lint: install  ## ruff
	@$(PYTHON) -m ruff check handler shim scripts tests

clean:  ## remove build output, logs and archives (keeps .venv/)
	rm -rf build logs model_store/*.mar
