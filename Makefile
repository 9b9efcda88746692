# `make demo` and `make test` do all set-up on a fresh machine.
# torch is pinned here only: the pinned CPU wheel installs quickly, while an open range can pull
# a multi-GB CUDA build. pyproject.toml states the supported range.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PIN := torch==2.13.0

.PHONY: venv install install-dev demo test bench clean

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

test: install-dev
	$(PY) -m pytest -q

bench: venv
	$(PY) -m pip install --quiet -e ".[bench]"
	$(PY) -m xcorr bench

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .hypothesis
