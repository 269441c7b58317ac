# `make run` trains the default model; `make test` runs the test suite.
# Both create .venv and install the project the first time.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: install run test test-faults cifar10-jpg clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[dev]"
	touch $@

install: $(VENV)/.installed

run: install
	$(PY) -m cifar_mlflow.train $(ARGS)

test: install
	$(PY) -m pytest -q -m "not faults" $(PYTEST_ARGS)

# Fault and concurrency tests: many real processes, full disks, stalled servers (a few minutes more).
test-faults: install
	$(PY) -m pytest -q -m faults $(PYTEST_ARGS)

# The real CIFAR-10 as JPEG images, for offline machines: make cifar10-jpg [SHARED=/path/to/shared]
SHARED ?= ../shared
cifar10-jpg:
	@test -f $(SHARED)/data/cifar10-jpg.tar.gz || { echo "no $(SHARED)/data/cifar10-jpg.tar.gz: pass SHARED=/path/to/shared"; exit 2; }
	mkdir -p data/cifar10-jpg && tar -xzf $(SHARED)/data/cifar10-jpg.tar.gz -C data/cifar10-jpg

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
