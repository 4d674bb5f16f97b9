# Front door: `make demo` and `make test` each create .venv, install, and run; nothing else needs doing first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Built and downloaded artefacts (stand-in model, synthetic photos, TF Hub cache) stay inside the checkout.
export CASSAVA_CACHE ?= $(CURDIR)/.cache
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help install demo test compare bench images clean system-deps

help:
	@echo "make demo     offline demo: stand-in model, cloud + edge servers, plots and report in out/demo"
	@echo "make test     the whole test suite (installs what it needs)"
	@echo "make compare  cloud vs edge accuracy comparison (stand-in; real model when ../shared exists)"
	@echo "make bench    benchmarks, printed as a table of ratios"
	@echo "make images   docker buildx commands for the cloud and edge images"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# nginx plays the Seldon ingress in the --remote tests; installed from Debian when missing (CI runs as root).
system-deps:
	@command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null; \
	  else echo "nginx not found: the --remote proxy tests will be skipped (apt-get install nginx-light)"; fi; }

demo: install
	$(BIN)/cassava demo --out out/demo

test: install system-deps
	$(BIN)/python -m pytest -q -p no:cacheprovider

compare: install
	$(BIN)/cassava compare --cloud-model standin --data standin --out out/compare/standin
	@if [ -d ../shared/models/cassava-cnn-256 ]; then \
	  $(BIN)/cassava compare --cloud-model ../shared/models/cassava-cnn-256/saved_model --input-scale 255 \
	    --classes cbb,cbsd,cgm,cmd,healthy --data ../shared/data/cassava-real --out out/compare/real; fi

bench: install
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf out .pytest_cache

-include deploy/images.mk
