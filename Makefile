# Every target sets up only what is missing, so a second run reuses what the first one built:
# - .venv (Python >= 3.11) with taskherd installed editable; reinstalled only when pyproject.toml
#   changes (the stamp file below);
# - the service binaries, via `python -m taskherd.deploy.local.setup`: nsqd/nsqlookupd built with
#   Go into ~/.cache/taskherd/bin, redis-server and mariadb-server installed with apt-get (as root).
# `make clean` removes what this tree built; it keeps ~/.cache/taskherd and the local cluster's
# data in .taskherd/ (delete those by hand to start from nothing).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.taskherd-installed
PYTHONS := python3.13 python3.12 python3.11 python3

.PHONY: help setup check test demo bench soak clean

help:
	@echo "make setup   venv, Python packages and service binaries (only what is missing)"
	@echo "make check   ruff, mypy and the import-linter contracts (python -m tests.checks)"
	@echo "make test    setup and check, then run the tests on real services (then again on a Redis Cluster)"
	@echo "make demo    setup, then run the main job on a local cluster"
	@echo "make bench   setup, then run the benchmarks"
	@echo "make soak    setup, then the nemesis soak on namespace hosts (root; SOAK_S=1800 s, SOAK_SEED to replay)"
	@echo "make clean   remove the venv and build leftovers of this tree"

setup: $(STAMP)
	$(PY) -m taskherd.deploy.local.setup

check: $(STAMP)
	$(PY) -m tests.checks

# Then the integration and fault suites again with Redis as a cluster of 3 masters + 3 replicas; tests
# about the one instance itself (marked single_redis) are left out, and so is test_redis_cluster.py,
# whose clusters are its own either way.
test: setup check
	$(PY) -m pytest -q $(PYTEST_ARGS)
	TASKHERD_TEST_REDIS=cluster $(PY) -m pytest -q -m "not single_redis" \
	  --ignore=tests/integration/test_redis_cluster.py $(PYTEST_ARGS) tests/integration tests/faults

demo: setup
	$(VENV)/bin/taskherd demo

bench: setup
	$(PY) -m bench

SOAK_S ?= 1800
SOAK_SEED ?=
soak: setup
	SOAK_S=$(SOAK_S) SOAK_SEED=$(SOAK_SEED) $(PY) -m tests.multihost.soak

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

# Picks the newest python3.x >= 3.11 on PATH. Debian splits `venv` into python3-venv: as root,
# install it when venv creation fails, then try again.
$(PY):
	@py=""; for c in $(PYTHONS); do \
	  if command -v $$c >/dev/null 2>&1 && $$c -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then \
	    py=$$c; break; fi; done; \
	if [ -z "$$py" ]; then echo "make: Python >= 3.11 not found; install it (Debian: apt-get install -y python3 python3-venv)" >&2; exit 1; fi; \
	echo "make: creating $(VENV) with $$(command -v $$py) ($$($$py -V))"; \
	if ! $$py -m venv $(VENV) >/dev/null 2>&1; then \
	  rm -rf $(VENV); \
	  if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then \
	    echo "make: '$$py -m venv' failed; install python3-venv (Debian: apt-get install -y python3-venv)" >&2; exit 1; fi; \
	  echo "make: installing python3-venv with apt-get"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q python3-venv >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q python3-venv >/dev/null; }; \
	  $$py -m venv $(VENV); \
	fi

clean:
	rm -rf $(VENV) build dist .pytest_cache .check .ruff_cache .mypy_cache *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
