# `make test` and `make demo` work on a fresh machine with only Python 3.11: they create .venv first.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test test-all demo clean

$(STAMP): requirements.txt requirements-dicom.txt
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found (Python 3.11 is required)" >&2; exit 2; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dicom.txt
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

test-all: $(STAMP)
	$(PY) -m pytest -q tests

demo: $(STAMP)
	PYTHON=$(PY) bash scripts/run_demo.sh demo_output

clean:
	rm -rf demo_output .pytest_cache
