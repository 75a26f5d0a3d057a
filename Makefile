# `make train ARGS="loss=mse pooling=none"` and `make test` create .venv on first use.
# `make SYSTEM_TORCH=1 ...` creates it with --system-site-packages: an installed torch (a CUDA
# build, say) satisfies the requirement and is reused instead of downloaded again.
# `make CPU_TORCH=1 ...` installs torch and torchvision from PyTorch's CPU-only index first: no
# CUDA libraries to download (the GitHub workflow sets it).
VENV ?= .venv
SYSTEM_TORCH ?=
CPU_TORCH ?=
CPU_TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
VENV_FLAGS := $(if $(SYSTEM_TORCH),--system-site-packages,)
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Two test workers: most tests wait on a train.py subprocess, so two fit in two cores.
TEST_WORKERS ?= 2

.PHONY: train test test-fast ci-smoke lint format clean

# The big install runs without --quiet: pip's own lines and progress bars show what it fetches.
$(STAMP): pyproject.toml
	python3 -m venv $(VENV_FLAGS) $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(if $(CPU_TORCH),$(PYTHON) -m pip install torch torchvision --index-url $(CPU_TORCH_INDEX))
	@echo "Installing aelab and its dependencies into $(VENV): on Linux torch with its CUDA"
	@echo "libraries: about 6.4 GB, about 3 minutes on a fast connection (once; SYSTEM_TORCH=1"
	@echo "reuses an installed torch instead, CPU_TORCH=1 takes the CPU build)."
	$(PYTHON) -m pip install -e ".[dev]"
	touch $(STAMP)

train: $(STAMP)
	$(PYTHON) train.py $(ARGS)

# Everything: lint, then every test (what .ci/run runs).
test: lint
	$(PYTHON) -m pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)

# The tests not marked slow (no training runs through the CLI, no real CIFAR-10): docs/development.md.
test-fast: $(STAMP)
	$(PYTHON) -m pytest -n $(TEST_WORKERS) -m "not slow" $(PYTEST_ARGS)

# The workflow's smoke job: train, eval.py and colorize on a generated folder, in a temp dir.
ci-smoke: $(STAMP)
	PYTHON=$(PYTHON) scripts/ci_smoke.sh

# actionlint checks the GitHub workflow in .github/workflows/.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/actionlint

# The same fixes, in the same order, as the pre-commit hooks.
format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
