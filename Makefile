# Every target creates (or reuses) its own virtual environment in .venv.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

LOCK := requirements/all.lock
# an extra index for torch's CPU build (torch==2.13.0+cpu) where pip's own configuration does
# not find it: make test TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
TORCH_INDEX_URL ?=

.PHONY: serve test lint lock train weights bench clean

# the exact versions and hashes of requirements/all.lock (every extra), then the project itself
$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes -r $(LOCK) $(if $(TORCH_INDEX_URL),--extra-index-url $(TORCH_INDEX_URL))
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

serve: $(STAMP)  ## start the service on the shipped weights (127.0.0.1:8000)
	$(PY) -m service

lint: $(STAMP)
	$(PY) deploy/lock.py --check
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
	$(PY) -m bench

lock: $(STAMP)  ## after editing pyproject.toml's dependencies: rewrite requirements/*.lock (~4 min)
	$(PY) deploy/lock.py

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
