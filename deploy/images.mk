# Container images of both tiers. Included from the top-level Makefile:
#
#   include deploy/images.mk
#
#   make images                   print the docker buildx commands (the default: nothing is built)
#   make images BUILD=1           run them too, when `docker buildx version` works
#   make images BUILD=1 PUSH=1    ... and push to the registry (needed for the multi-platform edge image)
#
# Paths are relative to the repository root, the build context of both Dockerfiles.
# Overridable: CASSAVA_REGISTRY, CASSAVA_IMAGE_TAG, CLOUD_IMAGE, EDGE_IMAGE, CLOUD_PLATFORMS,
# EDGE_PLATFORMS, BUILDX. The same names are in deploy/ (kustomize `images:`) and
# deploy/seldon/predictor-servers-values.yaml: change them together.

# Keep the including Makefile's default goal: this file's targets must not become it
# (when this file is the main makefile, `images` is the default).
_CASSAVA_IMAGES_MK := $(lastword $(MAKEFILE_LIST))
_CASSAVA_IMAGES_SAVED_GOAL := $(.DEFAULT_GOAL)

CASSAVA_REGISTRY ?= ghcr.io/farm-ext
CASSAVA_IMAGE_TAG ?= 0.1.0
CLOUD_IMAGE ?= $(CASSAVA_REGISTRY)/cassava-cloud:$(CASSAVA_IMAGE_TAG)
EDGE_IMAGE ?= $(CASSAVA_REGISTRY)/cassava-edge:$(CASSAVA_IMAGE_TAG)
CLOUD_PLATFORMS ?= linux/amd64
EDGE_PLATFORMS ?= linux/arm64,linux/arm/v7
BUILDX ?= docker buildx
BUILD ?= 0
PUSH ?= 0

# A multi-platform result cannot be --load'ed into a local docker image store: the edge image is
# pushed (PUSH=1) or stays in the buildx cache; the single-platform cloud image is loaded otherwise.
_CLOUD_OUTPUT = $(if $(filter 1,$(PUSH)), --push, --load)
_EDGE_OUTPUT = $(if $(filter 1,$(PUSH)), --push)

CLOUD_BUILD_CMD = $(BUILDX) build --platform $(CLOUD_PLATFORMS) -f cloud/Dockerfile -t $(CLOUD_IMAGE)$(_CLOUD_OUTPUT) .
EDGE_BUILD_CMD = $(BUILDX) build --platform $(EDGE_PLATFORMS) -f edge/Dockerfile -t $(EDGE_IMAGE)$(_EDGE_OUTPUT) .

# $(1): the command. Always printed; run only with BUILD=1 and a working buildx, never an error otherwise.
define _cassava_build
	@echo '$(1)'
	@if [ "$(BUILD)" != "1" ]; then \
	  echo '  (not run: set BUILD=1 to build)'; \
	elif ! $(BUILDX) version >/dev/null 2>&1; then \
	  echo '  (not run: `$(BUILDX) version` failed, docker buildx is not available here)'; \
	else \
	  $(1); \
	fi
endef

.PHONY: images images-cloud images-edge
images: images-cloud images-edge

images-cloud:
	$(call _cassava_build,$(CLOUD_BUILD_CMD))

images-edge:
	$(call _cassava_build,$(EDGE_BUILD_CMD))

ifeq ($(firstword $(MAKEFILE_LIST)),$(_CASSAVA_IMAGES_MK))
.DEFAULT_GOAL := images
else
.DEFAULT_GOAL := $(_CASSAVA_IMAGES_SAVED_GOAL)
endif
