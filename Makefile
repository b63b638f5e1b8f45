# Two commands for a fresh machine: `make run` and `make test`. Both create the venv they need.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test quick lint bench verify clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m gateway serve

lint: $(STAMP)
	$(VENV)/bin/ruff check gateway tests tools
	$(VENV)/bin/ruff format --check gateway tests tools
	$(VENV)/bin/mypy

test: lint
	$(PY) -m pytest

quick: $(STAMP)
	$(PY) -m pytest -m 'not slow' -q

bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,bench]'
	$(PY) tools/bench/log_bench.py
	$(PY) tools/bench/smtp_bench.py
	$(PY) tools/bench/pop3_bench.py
	$(PY) tools/bench/proxy_bench.py

verify: $(STAMP)
	$(PY) -m gateway verify

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
