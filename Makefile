# The two commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: demo test unit install venv bench soak clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel

venv: $(BIN)/python

# A real (non-editable) install, so twistd finds the plugin the way it will on a host.
install: venv
	$(BIN)/pip install -q '.[test]'
	@# Rebuild Twisted's plugin cache now, so twistd never has to write into site-packages.
	$(BIN)/python -c "from twisted.plugin import IPlugin, getPlugins; import twisted.plugins; list(getPlugins(IPlugin, twisted.plugins))"

demo: install
	$(BIN)/drbd-proxy-demo

# pytest exits 5 when it collected nothing: that is a failure here, like any other non-zero code.
test: install
	$(BIN)/python -m pyflakes drbdproxy tests bench
	$(BIN)/python -m mypy drbdproxy
	cd tests && ../$(BIN)/python -m pytest -q -p no:cacheprovider --timeout=300 . ; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

# The fast tests only (no daemons, sims or tools: about half a minute), while working.
unit: install
	cd tests && ../$(BIN)/python -m pytest -q -p no:cacheprovider -m unit .

bench: install
	$(BIN)/pip install -q '.[bench]'
	$(BIN)/python bench/run.py

# 10 minutes of replication through a proxy pair with random faults; prints what happened.
soak: install
	$(BIN)/python bench/soak.py --minutes 10

clean:
	rm -rf $(VENV) build *.egg-info twisted/plugins/dropin.cache
