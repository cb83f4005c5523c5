# Set-up and entry points. `make serve` and `make test` are the two commands README.md opens with.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NODE_STAMP := tests/node_modules/.installed

.PHONY: setup serve test test-long bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

$(NODE_STAMP): tests/package.json tests/package-lock.json
	cd tests && npm ci --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

serve: $(STAMP)
	$(VENV)/bin/agentstate serve

test: $(STAMP) $(NODE_STAMP)
	$(PY) -m pytest

test-long: $(STAMP) $(NODE_STAMP)
	HYPOTHESIS_PROFILE=long $(PY) -m pytest

bench: $(STAMP) $(NODE_STAMP)
	$(PY) -m pytest tests/bench -p no:cacheprovider -s -q

clean:
	rm -rf $(VENV) tests/node_modules .pytest_cache .hypothesis
