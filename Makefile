# Two entry points (see README): `make demo` and `make test`.
# Both create .venv with Python 3.11 and install the project into it.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-base: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed-base

$(VENV)/.installed-bench: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $@ $(VENV)/.installed-test $(VENV)/.installed-base

demo: $(VENV)/.installed-base
	$(BIN)/skmm-jax demo

# pytest exits 5 when it collects nothing; treat that as a failure with a message.
test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; fi; exit $$rc

bench: $(VENV)/.installed-bench
	$(BIN)/python benchmarks/sketch_variants.py
	$(BIN)/python benchmarks/synthetic_regression.py

clean:
	rm -rf $(VENV) .pytest_cache
