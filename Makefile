# Single entry point. `make demo` and `make test` create .venv when missing and install what they need.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Pinned so pip never pulls a multi-GB CUDA build; override for a GPU machine, e.g. TORCH_SPEC="torch==2.13.0".
TORCH_SPEC ?= torch==2.13.0
DEMO_OUT ?= demo_out

.PHONY: install test test-fast demo clean

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)" -e ".[test]"
	touch $@

install: $(VENV)/.installed

test: $(VENV)/.installed
	$(BIN)/python -m pytest

test-fast: $(VENV)/.installed
	$(BIN)/python -m pytest -m "not slow"

demo: $(VENV)/.installed
	$(BIN)/python -m engine.demo --out $(DEMO_OUT)

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
