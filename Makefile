# finetune developer commands. `make demo` and `make test` set everything up from nothing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install install-cpu lock demo lint format test test-fast test-unit test-e2e docs docs-pages docs-serve bench bench-peers clean

LOCK := requirements.lock
PIP := $(BIN)/python -m pip
# The lock's entries (a `name==version \` line and its --hash lines) whose names match a sed pattern: printed, or
# left out (none when the pattern is empty)
lock_entries = sed -n '/^\($(1)\)==/,/[^\\]$$/p' $(LOCK)
lock_without = sed '/^\($(1)\)==/,/[^\\]$$/d' $(LOCK)
LOCK_SKIP ?=

install: $(STAMP)

# Every download is checked against the lock's hashes: pip and the build backend (setuptools) first, then every
# locked dependency (no build isolation: the two sdist-only pins build with the locked setuptools), then finetune
# itself, editable and without dependencies (a source tree has no hash); `pip check` proves the lock complete.
# MedMNIST-C's corruptions (`finetune evaluate corruptions=medmnistc`), installed after `pip check` without its
# dependencies: its metadata pins scikit-image==0.23.2, medmnist==3.0.1 and opencv-python (a GUI build beside our
# headless one), none of which its corruption code needs; its wheel's sha256 is checked like the lock's
NO_DEPS_PIN := medmnistc==0.1.0 --hash=sha256:4529626f0ce7e498fe876acd12e50c3776103f9bfeb99afd3e7dba34a1779e34
$(STAMP): pyproject.toml constraints.txt $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(call lock_entries,pip\|setuptools) > $(VENV)/bootstrap.lock
	$(PIP) install --quiet --require-hashes --no-deps -r $(VENV)/bootstrap.lock
	$(call lock_without,$(LOCK_SKIP)) > $(VENV)/deps.lock
	$(PIP) install --quiet --require-hashes --no-build-isolation -r $(VENV)/deps.lock
	$(PIP) install --quiet --no-deps --no-build-isolation -e .
	$(PIP) uninstall --quiet --yes medmnistc  # a reinstall's `pip check` would see its unmet pins
	$(PIP) check
	echo '$(NO_DEPS_PIN)' > $(VENV)/no-deps.lock
	$(PIP) install --quiet --require-hashes --no-deps -r $(VENV)/no-deps.lock
	touch $(STAMP)

# Regenerate requirements.lock after editing constraints.txt: the same pins, each with the sha256 of every file the
# package index has for it (every platform and Python version). uv runs from its own venv, not the project's.
LOCK_TOOLS := build/lock-tools
LOCK_TOOL_PIN := uv==0.9.9
lock:
	test -x $(LOCK_TOOLS)/bin/python || $(PYTHON) -m venv $(LOCK_TOOLS)
	$(LOCK_TOOLS)/bin/python -m pip install --quiet $(LOCK_TOOL_PIN)
	$(LOCK_TOOLS)/bin/uv pip compile --quiet constraints.txt --generate-hashes --no-annotate \
	    --custom-compile-command 'make lock' --python $(LOCK_TOOLS)/bin/python \
	    --python-platform x86_64-manylinux_2_28 --python-version 3.11 -o $(LOCK)

# CPU-only machines: the CPU builds of the pinned torch/torchvision (no CUDA libraries; that index's files are not in
# the lock, so they are not hash-checked), then `install` without the lock's CUDA build and its libraries.
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu
TORCH_PINS := $(shell grep -E '^torch(vision)?==' constraints.txt)
CUDA_BUILD := torch\|torchvision\|triton\|nvidia-[a-z0-9-]*\|cuda-[a-z-]*
install-cpu:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --no-deps --index-url $(TORCH_CPU_INDEX) $(TORCH_PINS)
	$(MAKE) install LOCK_SKIP='$(CUDA_BUILD)'
	$(BIN)/python -c "import torch, sys; sys.exit(torch.version.cuda and 'torch ' + torch.__version__ + ' is a CUDA build: rm -rf $(VENV), then make install-cpu')"

demo: install
	$(BIN)/finetune

# Two pytest workers (pytest-xdist), a file each at a time (module fixtures are built once; the DDP tests
# share one file, so one worker), one torch thread each: most of a test is single-threaded Python
# (imports, subprocess start, Lightning's loop), so two workers keep both cores busy.
TEST_WORKERS ?= 2
# Tests marked gpu need a CUDA GPU: deselected here (benchmarks/gpu_check.py runs them on a GPU: pytest -m gpu).
PYTEST := OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder -m "not gpu"

# ruff: lint (pycodestyle, pyflakes, import order, pyupgrade, bugbear) and the formatter, as configured in
# pyproject.toml; `make format` rewrites the files, `make lint` only checks (CI runs it before the tests).
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: install
	$(PYTEST)

test-fast: install
	$(PYTEST) -m "not slow and not gpu"

# The suite in two halves: tests/unit/ (library functions in-process, seconds) and tests/e2e/ (finetune processes,
# whole runs, the benchmark harness); the rule that sorts a test file is in docs/architecture.md (Tests).
test-unit: install
	$(PYTEST) tests/unit

test-e2e: install
	$(PYTEST) tests/e2e

# The documentation site (mkdocs.yml) into site/; --strict: a broken link or a missing reference fails the build.
MKDOCS := NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs
# The pages generated from the code (docs/reference/commands.md, config.md, docs/results/benchmarks.md), written
# into docs/ and committed: tests/unit/test_docs_drift.py fails when one is stale
docs-pages: install
	$(BIN)/python docs/gen_pages.py

docs: docs-pages
	$(MKDOCS) build --strict

docs-serve: docs-pages
	$(MKDOCS) serve --strict --dev-addr 127.0.0.1:8000

bench: install
	$(BIN)/python -m benchmarks.run_all

# finetune vs fastai, the HF Trainer, smp and a plain timm loop, at the same epochs and the same seconds
# (hours on a CPU: ~8 h for everything here); each peer gets its own venv
# under benchmarks/.peers/. Options: make bench-peers ARGS="--datasets hymenoptera --seeds 0 --compare epochs|budget" (--quick: a set-up check)
bench-peers: install
	$(BIN)/python -m benchmarks.peers $(ARGS)

clean:
	rm -rf $(VENV) build dist site *.egg-info runs outputs multirun
