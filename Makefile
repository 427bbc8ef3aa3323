# Every target creates (or reuses) its own virtual environment in .venv.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: serve test lint train weights bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[train,dev]'
	touch $(STAMP)

serve: $(STAMP)  ## start the service on the shipped weights (127.0.0.1:8000)
	$(PY) -m service

lint: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test: lint  ## ruff, mypy and the whole test suite
	$(PY) -m pytest

train: $(STAMP)  ## example: make train ARGS="--family vae --epochs 5 --out runs/my-vae"
	$(PY) -m training train $(ARGS)

weights: $(STAMP)  ## retrain and re-evaluate every shipped model (about 4 hours on 2 cores)
	bash weights/train_all.sh

bench: $(STAMP)  ## needs wrk (apt-get install wrk); about 14 minutes on 2 cores
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) -m bench

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
