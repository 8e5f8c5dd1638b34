# Two commands: `make test` and `make demo`. Each sets itself up on a fresh machine (a .venv here).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# CPU hygiene: two torch threads on two cores made the suite 10x slower; nothing may reach a hub.
# `make demo` is one process, so it takes every core (DEMO_THREADS): on the 2-core machine a 900x576x1536
# matmul ran 1.9x faster with 2 threads, and a demo-policy SFT step 3.4x faster with 2 threads and bf16.
# `make reproduce` (the miniature, a 1M-parameter model) keeps one thread: its numbers were measured so.
export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export MPLBACKEND ?= Agg
export PYTHONHASHSEED ?= 0
DEMO_THREADS ?= $(shell nproc 2>/dev/null || echo 1)

.PHONY: setup test test-slow lint demo reproduce reproduce-demo bench gpu-check strip clean help

help:
	@echo "make test       set up .venv (if needed), lint, run the test suite (CPU, offline)"
	@echo "make demo       set up, then run the whole CPU pipeline offline"
	@echo "make reproduce  the ablation runs and all figures"
	@echo "make reproduce-demo  RL against the warm start on the demo policy (hours; resumes) -> figures/rl_vs_sft.*"
	@echo "make bench      benchmarks -> benchmarks/results/*.json"
	@echo "make test-slow  the slow-marked tests"
	@echo "make gpu-check  on a CUDA machine: the gpu tests and a GRPO profile -> benchmarks/results/gpu.json"
	@echo "make strip      strip notebook outputs"

$(STAMP): pyproject.toml requirements-assets.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e .
	$(PY) -m pip install --quiet --no-deps -r requirements-assets.txt
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (mmsearch-r1)" >/dev/null
	touch $(STAMP)

# Public-domain flag PNGs from the npm registry (needs npm). Without npm the world falls back to the
# flags that ship in the flagpy package (fewer, lower fidelity); the leading '-' allows that.
FLAGS := data/world/vendor/svg-country-flags/package/png250px
$(FLAGS): | $(STAMP)
	-$(PY) -m mmsearch_r1.data.world fetch-flags

# Headless Chromium for the trajectory viewer's browser test (tests/test_viewer.py), from Debian's packages:
# installed only when `chromium` is missing and apt-get exists (as root, or through passwordless sudo).
# Best effort: when it cannot be installed, setup says so and that test fails with the same instruction.
setup: $(STAMP) $(FLAGS)
	@command -v chromium >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1 || { \
	  SUDO=; [ "$$(id -u)" = 0 ] || SUDO="sudo -n"; \
	  echo "setup: installing chromium (Debian package) for tests/test_viewer.py"; \
	  { $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null 2>&1 \
	    || echo "setup: could not install chromium; run 'apt-get install -y chromium' as root"; }

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

test: lint
	$(VENV)/bin/pytest

test-slow: setup
	$(VENV)/bin/pytest -m slow

demo: setup
	OMP_NUM_THREADS=$(DEMO_THREADS) MKL_NUM_THREADS=$(DEMO_THREADS) $(PY) -m mmsearch_r1.demo

reproduce: setup
	$(PY) -m mmsearch_r1.demo --reproduce

# RL against the warm start on the CPU demo policy (python -m mmsearch_r1.rl_vs_sft): hours on 2 cores;
# every stage is skipped when its output exists and GRPO resumes from its last checkpoint, so run it again.
reproduce-demo: setup
	OMP_NUM_THREADS=$(DEMO_THREADS) MKL_NUM_THREADS=$(DEMO_THREADS) $(PY) -m mmsearch_r1.rl_vs_sft

bench: setup
	$(PY) benchmarks/run_all.py

# On a CUDA machine (a venv with a CUDA build of torch): the gpu-marked tests, then LoRA/QLoRA GRPO profiles.
gpu-check: setup
	$(PY) benchmarks/gpu_check.py

strip: setup
	$(PY) -m mmsearch_r1.notebook_utils strip notebooks/*.ipynb

clean:
	rm -rf runs .pytest_cache .ruff_cache benchmarks/results
