# finetune developer commands. `make demo` and `make test` set everything up from nothing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install install-cpu demo test test-fast bench bench-peers clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

# CPU-only machines: the CPU builds of the pinned torch/torchvision (no CUDA libraries), then `install`.
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu
TORCH_PINS := $(shell grep -E '^torch(vision)?==' constraints.txt)
install-cpu:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --index-url $(TORCH_CPU_INDEX) $(TORCH_PINS)
	$(MAKE) install
	$(BIN)/python -c "import torch, sys; sys.exit(torch.version.cuda and 'torch ' + torch.__version__ + ' is a CUDA build: rm -rf $(VENV), then make install-cpu')"

demo: install
	$(BIN)/finetune

# Two pytest workers (pytest-xdist), a file each at a time (module fixtures are built once; the DDP tests
# share one file, so one worker), one torch thread each: most of a test is single-threaded Python
# (imports, subprocess start, Lightning's loop), so two workers keep both cores busy.
TEST_WORKERS ?= 2
PYTEST := OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test: install
	$(PYTEST)

test-fast: install
	$(PYTEST) -m "not slow"

bench: install
	$(BIN)/python -m benchmarks.run_all

# finetune vs fastai, the HF Trainer, smp and a plain timm loop, at the same epochs and the same seconds
# (hours on a CPU: ~8 h for everything here); each peer gets its own venv
# under benchmarks/.peers/. Options: make bench-peers ARGS="--datasets hymenoptera --seeds 0 --compare epochs|budget" (--quick: a set-up check)
bench-peers: install
	$(BIN)/python -m benchmarks.peers $(ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info runs outputs multirun
