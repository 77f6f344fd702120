# `make demo` and `make test` create or refresh .venv, install what they need, then run.
# TORCH_SPEC: the CPU wheel by default; on a GPU host use e.g. `make demo TORCH_SPEC=torch`.
PY ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.mergesearch-installed

.PHONY: demo test lint bench test-vlmeval clean

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
	$(BIN)/python -m objectives.full_eval.vlmeval_selftest

clean:
	rm -rf $(VENV) .pytest_cache
