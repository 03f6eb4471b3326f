# Edge training — two commands: `make demo` (stack up, sample data, one pipeline run) and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV        := .venv
PY          := $(VENV)/bin/python
STATE       := .edge-stack
export AIRFLOW_HOME := $(CURDIR)/$(STATE)/airflow
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
export AIRFLOW__CORE__PLUGINS_FOLDER := $(CURDIR)/plugins
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: help install system-deps demo test bench stack stop status clean base-image two-hosts two-sites

help:
	@echo "make demo    start the local edge stack and Airflow, seed sample data, trigger and follow one run"
	@echo "make test    set up everything the tests need and run them"
	@echo "make bench   print the performance figures (P1..)"
	@echo "make two-hosts  central and site as two network namespaces: one run + backfill, the link captured (root)"
	@echo "make two-sites  central and two sites as network namespaces: one site fails, the other trains (root)"
	@echo "make status  show the local edge stack and Airflow;  make stop  stop both"

system-deps:
	@scripts/install_system_deps.sh

$(VENV)/.installed: requirements.txt requirements-dev.txt constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt -c constraints.txt
	$(PY) -m pip check
	touch $@

node_modules/.package-lock.json: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

install: system-deps $(VENV)/.installed node_modules/.package-lock.json

stack: install
	$(PY) scripts/edge_stack.py start

stop:
	@$(PY) scripts/airflow_local.py stop
	@$(PY) scripts/edge_stack.py stop

status:
	@$(PY) scripts/edge_stack.py status; $(PY) scripts/airflow_local.py status

demo: stack base-image
	SITES=$(or $(SITES),1) scripts/demo.sh

test: install base-image
	$(PY) -m pytest

# The two-host proof on its own (it is part of `make test` too): prints wall time, bytes site->central by destination,
# rows found on the wire and the refused central->site connections.
two-hosts: install base-image
	$(PY) -m pytest tests/e2e/test_two_hosts.py -s -q

# Two sites from one central Airflow, each site a namespace of its own: prints rows found per link and centrally (0).
two-sites: install
	$(PY) -m pytest tests/e2e/test_two_sites.py -s -q

bench: install base-image
	$(PY) bench/run_all.py

# Debian bookworm + python3 (mmdebstrap, tarball cached in .edge-stack/cache/base) imported into buildah's storage
# under .edge-stack/buildah as localhost/edge-python-base:bookworm: the scoring image's base. No-op when present.
base-image: install
	scripts/build_base_image.sh

clean: stop
	rm -rf $(STATE)
