# Front door: `make demo` and `make test` each create .venv, install, and run; nothing else needs doing first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Built and downloaded artefacts (stand-in and MobileNetV3 test models, synthetic photos, TF Hub cache) live outside
# the checkout, so a fresh clone (CI's) reuses them; each is versioned by name, so a changed recipe builds anew.
export CASSAVA_CACHE ?= $(HOME)/.cache/cassava
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help install demo test test-unit lint compare bench images clean system-deps image-deps kserve-client

help:
	@echo "make demo     offline demo: stand-in model, cloud + edge servers, plots and report in out/demo"
	@echo "make test     the whole test suite (installs what it needs; runs make lint first)"
	@echo "make test-unit  the in-process unit tests only (tests/unit: no server processes, no containers; minutes)"
	@echo "make lint     ruff check (line length 120, settings in pyproject.toml)"
	@echo "make compare  cloud vs edge accuracy comparison (stand-in; real model when ../shared exists)"
	@echo "make bench    benchmarks, printed as a table of ratios"
	@echo "make images   build the cloud (amd64) and edge (arm64) images here; prints the docker buildx commands too"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# nginx plays the Seldon ingress in the --remote tests; docker, qemu and debootstrap build and run the images in
# tests/test_images.py (which starts dockerd and registers qemu itself); chromium and its driver run the phone page
# in tests/test_page.py; Prometheus and promtool check, unit-test and run the alert rules in tests/test_monitoring.py.
# Installed from Debian when missing (as root; otherwise it says what to install).
IMAGE_DEPS := dockerd:docker.io qemu-aarch64-static:qemu-user-static debootstrap:debootstrap
SYSTEM_DEPS := nginx:nginx-light chromium:chromium chromedriver:chromium-driver promtool:prometheus \
	prometheus:prometheus $(IMAGE_DEPS)
# $(call apt_missing,COMMAND:PACKAGE ...): apt-get install the packages whose command is missing.
define apt_missing
	@missing="$$(for dep in $(1); do command -v $${dep%%:*} >/dev/null 2>&1 || [ -x /usr/sbin/$${dep%%:*} ] \
	  || echo $${dep#*:}; done)"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "not installed: $$missing (apt-get install them as root); what needs them will say so"; fi; fi
endef
system-deps:
	$(call apt_missing,$(SYSTEM_DEPS))
image-deps:
	$(call apt_missing,$(IMAGE_DEPS))

demo: install
	$(BIN)/cassava demo --out out/demo

# Style first (seconds): ruff with the settings in pyproject.toml (line length 120).
lint: install
	$(BIN)/ruff check .

# KServe's Python clients for tests/test_oip_clients.py, beside the venv and not in it (a plain `pip install kserve`
# upgrades FastAPI and Starlette under MLServer): kserve and the modules its import needs, without their dependencies
# (~140 MB, 126 of them the kubernetes client). Kept in the cache, so a fresh clone reuses it.
export KSERVE_CLIENT ?= $(CASSAVA_CACHE)/kserve-client-0.21.0
KSERVE_PACKAGES := kserve==0.21.0 'cloudevents<2' grpc-interceptor timing-asgi tabulate watchfiles kubernetes \
  oauthlib requests-oauthlib durationpy websocket-client deprecation
kserve-client: install
	@[ -d $(KSERVE_CLIENT)/kserve ] || $(BIN)/pip install -q --no-deps --target $(KSERVE_CLIENT) $(KSERVE_PACKAGES)

test: install system-deps lint kserve-client
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=15

# In this process only: runtimes loaded as MLServer loads them, the commands' pure decisions, the protocol layers.
test-unit: install
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not slow and not containers" --durations=5 tests/unit

REAL_COMPARE := --cloud-model ../shared/models/cassava-cnn-256/saved_model --input-scale 255 --classes cbb,cbsd,cgm,cmd,healthy

compare: install
	$(BIN)/cassava compare --cloud-model standin --data standin --out out/compare/standin
	@# The real model on both real photo sets; int8 is calibrated on the other set, never on the images it is scored on.
	@if [ -d ../shared/models/cassava-cnn-256 ]; then \
	  $(BIN)/cassava compare $(REAL_COMPARE) --data ../shared/data/cassava-more \
	    --calibration ../shared/data/cassava-real --out out/compare/real-300 && \
	  $(BIN)/cassava compare $(REAL_COMPARE) --data ../shared/data/cassava-real \
	    --calibration ../shared/data/cassava-more --out out/compare/real-27; fi

bench: install
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf out .pytest_cache

-include deploy/images.mk

# `make images` installs what the image builds need as `make test` does (as root), or says what to install.
images-cloud images-edge: image-deps
