# `make train ARGS="loss=mse pooling=none"` and `make test` create .venv on first use.
# `make SYSTEM_TORCH=1 ...` creates it with --system-site-packages: an installed torch (a CUDA
# build, say) satisfies the requirement and is reused instead of downloaded again.
VENV ?= .venv
SYSTEM_TORCH ?=
VENV_FLAGS := $(if $(SYSTEM_TORCH),--system-site-packages,)
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Two test workers: most tests wait on a train.py subprocess, so two fit in two cores.
TEST_WORKERS ?= 2

.PHONY: train test lint format benchmark clean

# The big install runs without --quiet: pip's own lines and progress bars show what it fetches.
$(STAMP): pyproject.toml
	python3 -m venv $(VENV_FLAGS) $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	@echo "Installing aelab and its dependencies into $(VENV): on Linux torch with its CUDA"
	@echo "libraries: about 5.9 GB, about 3 minutes on a fast connection (once; SYSTEM_TORCH=1"
	@echo "reuses an installed torch instead)."
	$(PYTHON) -m pip install -e ".[dev]"
	touch $(STAMP)

train: $(STAMP)
	$(PYTHON) train.py $(ARGS)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PYTHON) -m pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
