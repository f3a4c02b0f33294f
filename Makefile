# `make run` and `make test` each set up a virtualenv (once) and do their job.
PYTHON ?= python3.11
VENV   ?= .venv
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	@# PYTHONWARNINGS: setuptools prints a notice about editable installs of flat layouts on every
	@# install; it asks nothing of the user (tests import the checkout either way).
	PYTHONWARNINGS=ignore::UserWarning $(VENV)/bin/pip install --quiet -e '.[test]'
	touch $@

.PHONY: setup run test test-all test-unit
setup: $(VENV)/.installed

run: $(VENV)/.installed
	$(VENV)/bin/python flows/train_flow.py $(ARGS)

# The default suite covers every promise at least once; tests marked `slow` are longer variants
# of promises it already covers, and `test-all` adds them. Two processes, a whole file each (its
# servers start once): one's waits on servers and schedules overlap the other's work.
# TEST_WORKERS=0 runs it in this process.
TEST_WORKERS ?= 2
PARALLEL = -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder  # in conftest.py's order: longest first
test: $(VENV)/.installed
	$(VENV)/bin/python -m pytest -m "not slow" $(PARALLEL) $(PYTEST_ARGS)

test-all: $(VENV)/.installed
	$(VENV)/bin/python -m pytest $(PARALLEL) $(PYTEST_ARGS)

# Seconds: what needs no server and trains nothing, to check a change before the whole suite.
test-unit: $(VENV)/.installed
	$(VENV)/bin/python -m pytest -m unit $(PYTEST_ARGS)
