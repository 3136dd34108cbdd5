# The two commands of the README: `make run` (the conformance report over every
# installed backend) and `make test` (lint and the test suite). Each creates
# .venv on first use and reinstalls when pyproject.toml or constraints.txt change.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.attnref-installed

.PHONY: run test setup clean

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

clean:
	rm -rf $(VENV)
