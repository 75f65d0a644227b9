# Flotilla: `make run` starts the app, `make test` runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: run test bench clean

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

run: $(VENV)/.installed
	$(PY) -m webapp.supervisor run

test: $(VENV)/.installed
	$(PY) -m webapp.supervisor test $(ARGS)

bench: $(VENV)/.installed
	for script in preview generate launch latency dashboard security reconnect; do $(PY) bench/$$script.py || exit 1; done

clean:
	rm -rf $(VENV) var
