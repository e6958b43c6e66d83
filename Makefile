# One-command setup: `make train` (install + train the default experiment), `make test` (install + test suite).
# The virtual environment is created on first use; set VENV=... to put it elsewhere.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Pinned so pip takes the local wheels where a machine has them; any torch>=2.4 works (see pyproject.toml).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.ganlab-installed

.PHONY: install train test clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade "setuptools>=64" wheel
	$(BIN)/python -m pip install $(TORCH_SPEC)
	$(BIN)/python -m pip install -e ".[test]"
	touch $(STAMP)

train: $(STAMP)
	$(BIN)/ganlab train $(ARGS)

# One pytest worker per core (pytest-xdist), idle workers stealing queued tests (the long end-to-end tests would
# otherwise leave one core idle at the end); PYTEST_ARGS="-n 0 tests/test_x.py" runs serially.
PYTEST_ARGS ?= -n auto --dist worksteal
test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info
