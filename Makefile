# Two commands do all the set-up on a fresh machine with Python 3.11 and make:
#   make train   -> creates .venv, installs cropclf, trains on the demo data (or ARGS="--annotations ...")
#   make test    -> creates .venv if needed, runs the whole test suite (slow tests included: CI runs them)
#   make test-fast -> the tests that neither train nor export (-m "not slow"), for the edit loop
#   make bench-quality -> trains and scores the demo and the real sets found (../shared/real-sets), seeds 0,1,2
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
export NO_ALBUMENTATIONS_UPDATE := 1
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: train test test-fast bench bench-quality install clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

train: install
	$(PY) scripts/train.py $(ARGS)

test: install
	$(PY) -m pytest $(ARGS)

test-fast: install
	$(PY) -m pytest -m "not slow" $(ARGS)

bench: install
	$(PY) scripts/benchmark.py $(ARGS)

bench-quality: install
	$(PY) scripts/benchmark.py --quality $(ARGS)

clean:
	rm -rf $(VENV) runs data/demo
