# Container images of both tiers. Included from the top-level Makefile:
#
#   include deploy/images.mk
#
#   make images          build both images on this machine: cassava-cloud:0.1.0 (linux/amd64) and
#                        cassava-edge:0.1.0 (linux/arm64, through qemu), offline after the first download
#   make images-cloud    one of them (images-edge likewise)
#   make images-buildx   print the `docker buildx` commands for a machine with buildx and a registry
#
# Everything is done by the scripts in deploy/images/ (see deploy/README.md): dockerd and qemu binfmt when
# missing, a Debian bookworm base image per architecture built with debootstrap, and a wheelhouse per tier and
# platform downloaded on the host. Base images and wheelhouses are cached outside the checkout
# ($CASSAVA_BUILD_CACHE, default /var/cache/cassava-build as root), so a second build is fast.
# Overridable: CASSAVA_IMAGE_TAG, CASSAVA_REGISTRY (buildx commands only), BUILDX, BASE_IMAGE (skip the Debian base).

# Keep the including Makefile's default goal: this file's targets must not become it
# (when this file is the main makefile, `images` is the default).
_CASSAVA_IMAGES_MK := $(lastword $(MAKEFILE_LIST))
_CASSAVA_IMAGES_SAVED_GOAL := $(.DEFAULT_GOAL)
_CASSAVA_IMAGES_DIR := $(dir $(_CASSAVA_IMAGES_MK))images

CASSAVA_IMAGE_TAG ?= 0.1.0
CASSAVA_REGISTRY ?= REGISTRY
BUILDX ?= docker buildx
# The wheelhouse scripts read pyproject.toml with Python >= 3.11 (tomllib) and download with its pip.
IMAGES_PYTHON ?= $(if $(wildcard .venv/bin/python),.venv/bin/python,python3)

.PHONY: images images-cloud images-edge images-buildx
images: images-cloud images-edge images-buildx

images-cloud images-edge: images-%:
	PYTHON=$(IMAGES_PYTHON) $(_CASSAVA_IMAGES_DIR)/build.sh $* $(CASSAVA_IMAGE_TAG)

# A registry user builds with the public Python base image (BASE_IMAGE's default in the Dockerfiles).
images-buildx:
	@echo "With docker buildx and a registry (wheelhouses first, then build and push):"
	@echo "  $(_CASSAVA_IMAGES_DIR)/wheels.sh cloud linux/amd64 && $(_CASSAVA_IMAGES_DIR)/wheels.sh edge linux/arm64"
	@echo "  $(BUILDX) build --platform linux/amd64 -f cloud/Dockerfile -t $(CASSAVA_REGISTRY)/cassava-cloud:$(CASSAVA_IMAGE_TAG) --push ."
	@echo "  $(BUILDX) build --platform linux/arm64 -f edge/Dockerfile -t $(CASSAVA_REGISTRY)/cassava-edge:$(CASSAVA_IMAGE_TAG) --push ."
	@echo "then point the manifests at them: deploy/README.md, section 1."

ifeq ($(firstword $(MAKEFILE_LIST)),$(_CASSAVA_IMAGES_MK))
.DEFAULT_GOAL := images
else
.DEFAULT_GOAL := $(_CASSAVA_IMAGES_SAVED_GOAL)
endif
