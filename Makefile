# Two entry points: `make demo` (the main job) and `make test` (the whole suite).
# torch and torchvision are pinned and installed first (a matching pair that imports on this
# kind of machine and lies on its disk) so that pip does not resolve the open ranges in
# pyproject.toml to the newest builds; the package and its extras follow.
VENV ?= .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
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

# The offline real material of benchmarks/real.py (pretrained EfficientNet-Lite0, photos,
# Fashion-MNIST, the Brown corpus) into ./.bench; not part of `make test`.
.PHONY: bench-real-setup
bench-real-setup: $(VENV)/.installed
	benchmarks/setup_real.sh .bench $(PY)
