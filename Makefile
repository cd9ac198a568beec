# eostream: the two set-up commands are `make demo` and `make test`; `make help` lists the rest.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

UV_VERSION := 0.9.30
PYTHON ?= python3
# uv is installed with pip into $(PYTHON) and run as a module: no PATH assumptions.
UV := $(PYTHON) -m uv
# The real data folder beside the repo; override to point elsewhere. Without one, `make demo`
# downloads what it needs (checksummed) into the cache; the tests need the folder.
EOSTREAM_DATA_DIR ?= $(wildcard $(abspath $(CURDIR)/../shared/data))
ifneq ($(EOSTREAM_DATA_DIR),)
export EOSTREAM_DATA_DIR
endif
PYTEST_ARGS ?=

.PHONY: help
help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: uv
uv: ## install the pinned uv if it is missing
	@if [[ "$$($(UV) --version 2>/dev/null | cut -d' ' -f2)" != "$(UV_VERSION)" ]]; then \
		$(PYTHON) -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"; fi

# Bytecode is compiled once, at install, as the images do (deploy/docker/Dockerfile). Where
# PYTHONDONTWRITEBYTECODE is set (this machine sets it) Python writes no .pyc, so every process
# would compile each module it imports, every time: importing mlflow's server, torch, onnx,
# onnxruntime, rasterio, fastapi and aiokafka took 12.4 s without and 5.7 s with. uv compiles the
# installed packages (33-38 s on a fresh .venv, 1.5 s when they are unchanged: only `install` asks,
# not each `uv run`); compileall the workspace's own sources (0.4 s; ~0.5 s less per process).
WORKSPACE_SOURCES := shared/src runner/src $(wildcard services/*/src)

.PHONY: install
install: uv ## create .venv from uv.lock (one environment for the whole workspace)
	@start=$$(date +%s); $(UV) sync --all-packages --frozen --quiet --compile-bytecode; \
	.venv/bin/python -m compileall -q $(WORKSPACE_SOURCES) >/dev/null; \
	echo "environment ready in $$(( $$(date +%s) - start ))s"
	@$(MAKE) --no-print-directory viewer

# The inference map page's MapLibre GL, from the npm registry by its lock (no CDN at run time);
# npm ci runs again only when package-lock.json is newer than the installed tree.
VIEWER_DIR := services/inference/viewer
.PHONY: viewer
viewer: ## install the map page's JavaScript (npm ci in services/inference/viewer)
	@if ! command -v npm >/dev/null 2>&1; then \
		echo "viewer: npm is missing, the map page is off (make tools installs it)"; \
	elif [[ ! -f $(VIEWER_DIR)/node_modules/.package-lock.json || \
		$(VIEWER_DIR)/package-lock.json -nt $(VIEWER_DIR)/node_modules/.package-lock.json ]]; then \
		npm ci --prefix $(VIEWER_DIR) --no-audit --no-fund --loglevel=error >/dev/null \
			&& echo "viewer: maplibre-gl installed"; fi

.PHONY: tools
tools: ## system tools the tests use (docker-compose, Chromium for the browser test, npm)
	@deploy/local/tools.sh
	@$(MAKE) --no-print-directory viewer

.PHONY: stack-up
stack-up: install ## start the real local stack (Kafka, MinIO, PostgreSQL, MLflow, Prometheus, STAC API)
	@deploy/local/stack up

.PHONY: stack-down
stack-down: ## stop the local stack
	@deploy/local/stack down

.PHONY: data-check
data-check:
	@[[ -n "$(EOSTREAM_DATA_DIR)" && -d "$(EOSTREAM_DATA_DIR)" ]] || { echo "no data folder" \
		"(../shared/data is missing): the tests need the real data (EuroSAT, Sentinel-2 scenes," \
		"STAC items); set EOSTREAM_DATA_DIR to it" >&2; exit 2; }

# Two passes over the same stack: first every test not marked `alone` on $(TEST_WORKERS) pytest-xdist
# workers, a whole file to a worker at a time (conftest.py); then the `alone` ones one by one (they
# stop the broker, or run the whole system's processes). One test at a time left the two cores
# here 38 % idle on average (vmstat over a clean-clone CI run). Both passes always run; exit
# status 5 (a PYTEST_ARGS selection that leaves a pass nothing to run) is no failure.
TEST_WORKERS ?= 2
# one pass: pytest with $(1); its failure is kept in $$failed (exit status 5 is none) and the
# recipe goes on
pytest_pass = $(UV) run --frozen pytest $(1) $(PYTEST_ARGS) || { rc=$$?; [[ $$rc == 5 ]] || failed=$$rc; }

.PHONY: test
test: data-check install tools stack-up ## install everything, start the real stack, run every test
	@eval "$$(deploy/local/stack env)"; failed=0; \
	$(call pytest_pass,-m "not alone" -n $(TEST_WORKERS)); \
	$(call pytest_pass,-m alone); \
	exit $$failed

# The notebooks/ are tests too (pytest --nbmake, pyproject.toml): `make test` executes each one on
# a fresh kernel against the embedded system and fails if a cell raises. `make notebooks` runs only
# them and writes the README's pictures (docs/img/notebooks/).
.PHONY: notebooks
notebooks: data-check install ## execute the notebooks/ and refresh their pictures in docs/img/notebooks
	@mkdir -p docs/img/notebooks; EOSTREAM_NOTEBOOK_FIGURES=$(CURDIR)/docs/img/notebooks \
		$(UV) run --frozen pytest notebooks $(PYTEST_ARGS)

.PHONY: test-unit
test-unit: data-check install tools ## only the tests that need no server (on the TEST_WORKERS xdist workers)
	@$(UV) run --frozen pytest -m "not stack" -n $(TEST_WORKERS) $(PYTEST_ARGS)

# mypy --strict (pyproject.toml) on the sources in one call, then on each tests folder alone: the
# folders share module names (conftest, test_stack, ...) that one call would see twice. The folder
# above each is a package base, so `from .conftest import ...` resolves under services/<name>/
# even where <name> is no valid module name (registry-bridge).
SOURCE_DIRS := $(WORKSPACE_SOURCES)
# mypy's incremental cache lives outside the clone, beside the stack's downloads, so a fresh clone
# (CI's) reuses it: `make lint` took 40 s instead of 71-79 s in a fresh clone. mypy itself drops
# the entries of another mypy version and of files whose contents changed.
MYPY_CACHE_DIR ?= $(or $(EOSTREAM_CACHE),$(HOME)/.cache/eostream)/mypy
export MYPY_CACHE_DIR
TEST_PATHS := conftest.py shared/tests runner/tests $(wildcard services/*/tests) tests benchmarks

.PHONY: lint
lint: install ## ruff check, ruff format --check, mypy --strict on sources, tests and benchmarks
	@$(UV) run --frozen ruff check .
	@$(UV) run --frozen ruff format --check .
	@$(MAKE) --no-print-directory mypy

.PHONY: mypy
mypy: ## mypy --strict on every source and tests folder (make lint runs it; so does pre-commit)
	@$(UV) run --frozen mypy $(SOURCE_DIRS)
	@failed=""; for path in $(TEST_PATHS); do \
		MYPYPATH="$$(dirname "$$path")" $(UV) run --frozen mypy --explicit-package-bases "$$path" \
			|| failed="$$failed $$path"; \
	done; \
	if [[ -n "$$failed" ]]; then echo "mypy found errors in:$$failed" >&2; exit 1; fi

# Compose resolves every ${VAR:?...} of docker-compose.yml (the services' secrets) even to build,
# though no build uses one: `images` gives each that is unset a throwaway value for the build
# alone, so a fresh clone builds with no .env (`up` still refuses to start without them).
COMPOSE_REQUIRED = $(shell grep -oE '\$$\{[A-Za-z0-9_]+:\?' docker-compose.yml | tr -d '$${:?' | sort -u)

.PHONY: images
images: ## build the service images and MLflow's (docker compose; no secrets needed), tagged EOSTREAM_TAG (default dev)
	@for name in $(COMPOSE_REQUIRED); do export "$$name=$${!name:-unused-by-image-builds}"; done; \
	EOSTREAM_GIT_COMMIT="$$(git rev-parse HEAD)" $(or $(COMPOSE),docker compose) build \
		ingest trainer registry-bridge inference mlflow

.PHONY: demo
demo: install ## the main job on the embedded default, then serve until Ctrl-C (EXIT=1: stop after)
	@$(UV) run --frozen eostream demo $(if $(EXIT),--exit)

.PHONY: clean
clean: ## remove the environment and caches inside the repo (not the download caches)
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache .eostream
	find $(WORKSPACE_SOURCES) -name __pycache__ -type d -prune -exec rm -rf {} +
