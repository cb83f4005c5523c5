# Set-up and entry points. `make serve` and `make test` are the two commands README.md opens with.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NODE_STAMP := tests/node_modules/.installed

.PHONY: setup serve test test-long bench board clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# the checkout on sys.path through a plain .pth: setuptools' default editable finder is imported
	# by every Python start in the venv (25 ms of each CLI call); the default mode if compat is gone
	$(PY) -m pip install --quiet -e '.[test]' --config-settings editable_mode=compat 2>/dev/null \
		|| $(PY) -m pip install --quiet -e '.[test]'
	$(PY) -m compileall -q replica transport compat  # bytecode once: the CLI starts faster even where PYTHONDONTWRITEBYTECODE is set
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

# The live board's script (transport/board/board.js, committed so a pip install needs no Node):
# yjs and y-websocket bundled from tests/node_modules; tests/board checks the committed file is this output.
BOARD_OUT ?= transport/board/board.js
board: $(NODE_STAMP)
	NODE_PATH=tests/node_modules tests/node_modules/.bin/esbuild transport/board/src/board.mjs --bundle \
		--format=iife --platform=browser --target=es2020 --minify --log-level=warning --outfile=$(BOARD_OUT)

clean:
	rm -rf $(VENV) tests/node_modules .pytest_cache .hypothesis
