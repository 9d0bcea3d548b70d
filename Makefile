# Two entry points: `make demo` (the main job) and `make test` (the whole suite).
# torch==2.13.0 is installed first so that pip takes the local CPU wheel instead of
# resolving the open range in pyproject.toml to the newest CUDA build.
VENV ?= .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

.PHONY: install demo test lint
install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/gfsprune demo

# Two pytest workers, one torch thread each (conftest.py): the suite uses both cores of a
# 2-core machine without oversubscribing them.
test: $(VENV)/.installed
	$(PY) -m ruff check src tests benchmarks conftest.py
	$(PY) -m pytest -q -n 2

lint: $(VENV)/.installed
	$(PY) -m ruff check src tests benchmarks conftest.py
