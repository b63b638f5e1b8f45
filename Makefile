# Two commands for a fresh Debian machine: `make run` and `make test`. Each sets up what it needs.
#
# One venv (.venv) with one stamp per install: `make run` installs the package alone
# (.venv/.installed-run: the server's dependencies, nothing else); `make test` installs it with
# the `test` extras (.venv/.installed-test: pytest, Playwright, ruff, mypy, ...). Debian
# packages come from tools/system-packages.sh (as root, or through sudo): `make run` needs
# python3-venv at most, `make test` also the test peers (Postfix, Dovecot, fetchmail, swaks,
# PostgreSQL, Chromium, rsync, systemd-analyze).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
SYSTEM_PACKAGES := PYTHON=$(PYTHON) bash tools/system-packages.sh
RUN_STAMP  := $(VENV)/.installed-run
TEST_STAMP := $(VENV)/.installed-test

.PHONY: run test quick lint bench verify clean system-packages
# Prerequisites in the order written, also under -j: the Debian packages come first.
.NOTPARALLEL:

$(PY):
	$(SYSTEM_PACKAGES) venv
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(RUN_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e .
	touch $@

$(TEST_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

system-packages:
	$(SYSTEM_PACKAGES) test

run: $(RUN_STAMP)
	$(PY) -m gateway serve

lint: $(TEST_STAMP)
	$(VENV)/bin/ruff check gateway tests tools
	$(VENV)/bin/ruff format --check gateway tests tools
	$(VENV)/bin/mypy

# The test peers first (system-packages: tools/system-packages.sh test installs Postfix with
# smtp-source, Dovecot, fetchmail, swaks, PostgreSQL 15, Prometheus, pebble and Chromium, and
# checks every tool the tests call), then the venv with the test extras (lint), then the suite.
test: system-packages lint
	$(PY) -m pytest

quick: system-packages $(TEST_STAMP)
	$(PY) -m pytest -m 'not slow' -q

bench: system-packages $(TEST_STAMP)
	$(PY) -m pip install --quiet -e '.[test,bench]'
	$(PY) tools/bench/log_bench.py
	$(PY) tools/bench/smtp_bench.py
	$(PY) tools/bench/pop3_bench.py
	$(PY) tools/bench/proxy_bench.py

verify: $(RUN_STAMP)
	$(PY) -m gateway verify

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
