# `make demo` and `make test` do all set-up on a fresh machine.
# torch is pinned here only: the pinned CPU wheel installs quickly, while an open range can pull
# a multi-GB CUDA build. pyproject.toml states the supported range.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PIN := torch==2.13.0

.PHONY: venv install install-dev demo lint docs test bench sampler clean

$(PY):
	$(PYTHON) -m venv $(VENV)

venv: $(PY)
	$(PY) -m pip install --quiet $(TORCH_PIN)

install: venv
	$(PY) -m pip install --quiet -e .

install-dev: venv
	$(PY) -m pip install --quiet -e ".[dev]"

demo: venv
	$(PY) -m pip install --quiet -e ".[match]"
	$(PY) -m xcorr demo

# Lint and formatting rules and the type checker's settings live in pyproject.toml.
LINT_PATHS := src tests examples tools conftest.py docs/conf.py

lint: install-dev
	$(PY) -m ruff check $(LINT_PATHS)
	$(PY) -m ruff format --check $(LINT_PATHS)
	$(PY) -m mypy

# The API reference and the pages of docs/; any warning fails the build. -E rereads every page, so
# a warning is reported again on a rebuild where nothing changed.
docs: install-dev
	$(PY) -m sphinx -E -W --keep-going -q -b html docs docs/_build/html

# Lint and types, then the docs build, then the tests (the docstring examples of src/xcorr among them).
test: lint docs
	$(PY) -m pytest -q

bench: venv
	$(PY) -m pip install --quiet -e ".[bench]"
	$(PY) -m xcorr bench

# Optional: spatial-correlation-sampler's CPU extension, the compiled peer of the flow suite and of
# tests/test_compat.py, which then use it (nothing else needs it). Needs a C++ compiler and PyPI.
sampler: venv
	$(PY) tools/build_sampler.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .hypothesis .mypy_cache .ruff_cache docs/_build
