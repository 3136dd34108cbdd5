# The two commands of the README: `make run` (the conformance report over every
# installed backend) and `make test` (lint and the test suite). Each creates
# .venv on first use and reinstalls when pyproject.toml or constraints.txt change.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.attnref-installed

.PHONY: run test setup clean peers

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -qq --upgrade pip
	$(BIN)/python -m pip install -qq -c constraints.txt -e ".[torch,test,bench,docs]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/attnref backends
	$(BIN)/attnref conform

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -n 2

# The peer tests: install the `peers` extra (jax, onnx, onnxruntime) and the two outside backends of
# docs/examples, then run tests/peers (which skip, with the reason, where a peer is absent).
peers: $(STAMP)
	$(BIN)/python -m pip install -qq -c constraints.txt -e ".[peers]"
	$(BIN)/python -m pip install -qq --no-deps --no-build-isolation \
		-e docs/examples/attnref-jax -e docs/examples/attnref-onnxruntime
	$(BIN)/python -m pytest tests/peers -q

clean:
	rm -rf $(VENV)
