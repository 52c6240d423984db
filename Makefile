# The two commands of the README:  `make train`  and  `make test`.
# Both create .venv on first use. An importable torch (with --system-site-packages, also one the
# user already has) is kept; otherwise the CPU wheel torch==2.13.0 is installed first, so pip
# never reaches for a multi-GB CUDA build.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: train test lint typecheck

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv --system-site-packages $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

train: $(BIN)/.installed
	$(BIN)/manytask train --config configs/multidigits.yaml

lint: $(BIN)/.installed
	$(BIN)/ruff check manytask tests benchmarks
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest -n 2 tests
