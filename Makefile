# parcae-scaling: `make demo` runs the main job on the embedded defaults, `make test` the tests.
# Both create .venv and install what they need first (once; again when pyproject.toml changes).
#
# PyTorch: on a machine without an NVIDIA driver the default is the CPU build pinned below; with
# `nvidia-smi` present it is the latest CUDA build. Override either way, e.g.
#   make test TORCH_SPEC="torch==2.13.0" TORCH_PIP_ARGS="--index-url <your wheel index>"

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= $(shell if command -v nvidia-smi >/dev/null 2>&1; then echo torch; else echo torch==2.13.0; fi)
TORCH_PIP_ARGS ?=
PYTEST_ARGS ?=
DEMO_DIR ?= out
DEMO_SPEC ?= default
DEMO_SWEEP ?= default

.PHONY: install demo lint test test-all bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH_SPEC)" $(TORCH_PIP_ARGS)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

# The built-in default sweep (isoFLOP over mu_rec on the embedded corpus, local backend), then
# every fit and figure in one HTML report: $(DEMO_DIR)/report/report.html.
# The store is the one every command finds with no flags: $$PARCAE_STORE if set, else ./parcae.sqlite.
# DEMO_SPEC / DEMO_SWEEP: another spec and the sweep name it records (README: the reseeded check).
demo: install
	mkdir -p $(DEMO_DIR)
	$(VENV)/bin/parcae-sweep launch $(DEMO_SPEC)
	$(VENV)/bin/parcae-sweep status $(DEMO_SWEEP)
	$(VENV)/bin/parcae-fit report --sweep $(DEMO_SWEEP) --out $(DEMO_DIR)/report

lint: install
	$(VENV)/bin/ruff check --no-cache .

test: lint
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-all: lint
	$(PY) -m pytest $(PYTEST_ARGS)

bench: install
	for script in bench/*.py; do echo "== $$script"; $(PY) $$script || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
