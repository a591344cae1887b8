# The whole set-up on a fresh machine is one of these two commands:
#   make demo   -> create .venv, install the framework and first-party plugins, run the offline demo
#   make test   -> same install, run the test suite and build the docs strictly
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# CPU wheel that exists on every machine here; a looser pin pulls CUDA packages.
TORCH_PIN ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: install demo test retrain-check bench docs docs-check clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml plugins/tae-iti/pyproject.toml plugins/tae-caa/pyproject.toml plugins/tae-toxicity/pyproject.toml plugins/tae-bias/pyproject.toml
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_PIN)"
	$(PIP) install -q -e ".[dev]" -e plugins/tae-iti -e plugins/tae-caa -e plugins/tae-toxicity -e plugins/tae-bias
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tae demo

test: $(STAMP)
	$(VENV)/bin/ruff check tae_framework plugins tests benchmarks docs
	$(PY) -m pytest
	$(VENV)/bin/mkdocs build --strict --site-dir site

# Retrain the shipped organism from its pinned recipe and compare (about 7 minutes of
# 2 cores; CI runs it after `make test`).
retrain-check: $(STAMP)
	$(PY) -m pytest -m retrain

bench: $(STAMP)
	$(PY) -m pytest benchmarks --benchmark-enable --benchmark-only

docs: $(STAMP)
	$(VENV)/bin/mkdocs serve

# Build the site and look at it in headless Chromium, offline (needs Debian's chromium;
# screenshots in site-screenshots/). See docs/contributing.md.
docs-check: $(STAMP)
	$(VENV)/bin/mkdocs build --strict --site-dir site
	$(PY) docs/_hooks/check_render.py site --out site-screenshots

clean:
	rm -rf $(VENV) site site-screenshots .pytest_cache
