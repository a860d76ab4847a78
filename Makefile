# Two entry points for a fresh machine: `make run` serves devreg, `make test` runs the suite.
# Both build the virtual environment and install PostgreSQL's binaries first when missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The environment is made again, from scratch, unless it has this Python (none, a removed one).
version = $(shell $(1) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
PYTHON_VERSION := $(call version,$(PYTHON))
VENV_VERSION := $(call version,$(BIN)/python)
INSTALLED := $(VENV)/.installed-python$(PYTHON_VERSION)
PYTEST_ARGS ?=
# One pytest worker per core, each with a PostgreSQL cluster of its own; TEST_WORKERS=0 runs in-process.
TEST_WORKERS ?= auto

.PHONY: run test check postgres lock clean

run: $(INSTALLED) postgres
	$(BIN)/devreg serve

test: $(INSTALLED) postgres
	$(BIN)/pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)

check: $(INSTALLED)
	$(BIN)/ruff check src tests migrations bench
	$(BIN)/ruff format --check src tests migrations bench
	$(BIN)/mypy src
	$(BIN)/lint-imports
	$(BIN)/deptry src

postgres:
	@bash scripts/ensure-postgres.sh

$(INSTALLED): pyproject.toml requirements.lock
	@bash scripts/ensure-venv-support.sh $(PYTHON)
	$(PYTHON) -m venv $(if $(filter $(PYTHON_VERSION),$(VENV_VERSION)),,--clear) $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[dev]'
	touch $@

# Refresh the pinned versions after changing dependencies in pyproject.toml, in a virtual
# environment of its own: pins nothing needs any more drop out, pinned versions stay (delete a
# line to let that package move to its newest release), new dependencies get their newest.
LOCK_VENV := .lock-venv
lock:
	@bash scripts/ensure-venv-support.sh $(PYTHON)
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[dev]'
	$(LOCK_VENV)/bin/pip freeze --exclude-editable --disable-pip-version-check > requirements.lock
	rm -rf $(LOCK_VENV)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
