# Single entry point. `make demo` and `make test` create .venv when missing and install what they need.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Pinned so pip never pulls a multi-GB CUDA build; override for a GPU machine, e.g. TORCH_SPEC="torch==2.13.0".
TORCH_SPEC ?= torch==2.13.0
DEMO_OUT ?= demo_out

.PHONY: install test test-fast test-slicer screenshots demo clean

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)" -e .
	touch $@

# The test stack adds pytest and the headless Slicer stack (slicer-core, VTK, PySide6; ~2 GB),
# which `make demo` does not need.
$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)" -e ".[test,slicer]"
	touch $@

install: $(VENV)/.installed-test

test: $(VENV)/.installed-test
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest

test-fast: $(VENV)/.installed-test
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest -m "not slow"

# Slicer module tests only: headless MRML (slicer-core), offscreen EGL rendering, the .ui in a Qt loader.
test-slicer: $(VENV)/.installed-test
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest tests/slicer

# Re-render Resources/Screenshots/*.png (real offscreen renders through the module's MRML glue).
screenshots: $(VENV)/.installed-test
	$(BIN)/python tests/slicer/offscreen.py

demo: $(VENV)/.installed
	$(BIN)/python -m engine.demo --out $(DEMO_OUT)

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
