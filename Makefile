# The two commands of the README: `make demo` and `make test`; and `make install` for a DRBD host.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

# `make install`: a self-contained venv at PREFIX, launchers in SBINDIR, units, init script, docs.
# With DESTDIR (packaging), everything lands under DESTDIR but names its final paths.
DESTDIR    ?=
PREFIX     ?= /opt/drbdproxy
SBINDIR    ?= /usr/sbin
UNITDIR    ?= /usr/lib/systemd/system
INITDIR    ?= /etc/init.d
DEFAULTDIR ?= /etc/default
DOCDIR     ?= /usr/share/doc/drbdproxy
# Extra pip options for `make install`, e.g. PIP_INSTALL_OPTS="--no-index --find-links DIR".
PIP_INSTALL_OPTS ?=

TARGET = $(DESTDIR)$(PREFIX)
UNITS  = drbd-proxy.service drbd-proxy.socket

.PHONY: demo test unit dev venv bench soak clean install uninstall

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel

venv: $(BIN)/python

# A real (non-editable) install into .venv, so twistd finds the plugin the way it will on a host.
dev: venv
	$(BIN)/pip install -q '.[test]'
	@# Rebuild Twisted's plugin cache now, so twistd never has to write into site-packages.
	$(BIN)/python -c "from twisted.plugin import IPlugin, getPlugins; import twisted.plugins; list(getPlugins(IPlugin, twisted.plugins))"

demo: dev
	$(BIN)/drbd-proxy-demo

# pytest exits 5 when it collected nothing: that is a failure here, like any other non-zero code.
test: dev
	$(BIN)/python -m pyflakes drbdproxy tests bench
	$(BIN)/python -m mypy drbdproxy
	cd tests && ../$(BIN)/python -m pytest -q -p no:cacheprovider --timeout=300 . ; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

# The fast tests only (no daemons, sims or tools: about half a minute), while working.
unit: dev
	cd tests && ../$(BIN)/python -m pytest -q -p no:cacheprovider -m unit .

bench: dev
	$(BIN)/pip install -q '.[bench]'
	$(BIN)/python bench/run.py

# 10 minutes of replication through a proxy pair with random faults; prints what happened.
soak: dev
	$(BIN)/python bench/soak.py --minutes 10

# The venv is built where it will run (DESTDIR empty) or under DESTDIR and then made to name its
# final path: script shebangs, activate scripts and pyvenv.cfg, and the paths in the bytecode.
install:
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "drbdproxy needs Python >= 3.11: make install PYTHON=python3.11")'
	@# --clear empties PREFIX: only ever a venv of ours.
	@[ ! -e $(TARGET) ] || [ -e $(TARGET)/pyvenv.cfg ] || \
	    { echo "$(TARGET) exists and is not a venv: refusing to replace it"; exit 1; }
	$(PYTHON) -m venv --clear $(TARGET)
	$(TARGET)/bin/python -m pip install -q --no-compile --disable-pip-version-check $(PIP_INSTALL_OPTS) .
	$(TARGET)/bin/python -c "from twisted.plugin import IPlugin, getPlugins; import twisted.plugins; list(getPlugins(IPlugin, twisted.plugins))"
ifneq ($(DESTDIR),)
	grep -rlI -F '$(TARGET)' $(TARGET)/bin $(TARGET)/pyvenv.cfg | xargs -r sed -i 's|$(TARGET)|$(PREFIX)|g'
	$(TARGET)/bin/python -m compileall -q -f -s '$(DESTDIR)' -p / $(TARGET)/lib
else
	$(TARGET)/bin/python -m compileall -q $(TARGET)/lib
endif
	install -d $(DESTDIR)$(SBINDIR) $(DESTDIR)$(UNITDIR) $(DESTDIR)$(INITDIR) $(DESTDIR)$(DEFAULTDIR) \
	    $(DESTDIR)$(DOCDIR)/examples $(DESTDIR)$(DOCDIR)/img
	ln -sf $(PREFIX)/bin/drbd-proxy $(DESTDIR)$(SBINDIR)/drbd-proxy
	ln -sf $(PREFIX)/bin/drbd-proxy-ctl $(DESTDIR)$(SBINDIR)/drbd-proxy-ctl
	for unit in $(UNITS); do \
	    sed -e 's|/usr/sbin/drbd-proxy|$(SBINDIR)/drbd-proxy|g' -e 's|/usr/share/doc/drbdproxy|$(DOCDIR)|g' \
	        etc/systemd/$$unit > $(DESTDIR)$(UNITDIR)/$$unit && chmod 644 $(DESTDIR)$(UNITDIR)/$$unit; \
	done
	@# drbd.service orders itself after drbdproxy.service, drbd@.service after drbd-proxy.service.
	ln -sf drbd-proxy.service $(DESTDIR)$(UNITDIR)/drbdproxy.service
	sed -e 's|^SBINDIR=.*|SBINDIR=$${SBINDIR:-$(SBINDIR)}|' etc/init.d/drbdproxy > $(DESTDIR)$(INITDIR)/drbdproxy
	chmod 755 $(DESTDIR)$(INITDIR)/drbdproxy
	[ -e $(DESTDIR)$(DEFAULTDIR)/drbdproxy ] || install -m 644 etc/default/drbdproxy $(DESTDIR)$(DEFAULTDIR)/drbdproxy
	install -m 644 README.md docs/*.md $(DESTDIR)$(DOCDIR)/
	install -m 644 docs/img/*.png $(DESTDIR)$(DOCDIR)/img/
	install -m 644 etc/drbd.conf.example etc/drbd84.conf.example \
	    etc/manhole_authorized_keys.example $(DESTDIR)$(DOCDIR)/examples/

uninstall:
	@[ ! -e $(TARGET) ] || [ -e $(TARGET)/pyvenv.cfg ] || \
	    { echo "$(TARGET) is not a venv: refusing to remove it"; exit 1; }
	rm -rf $(TARGET) $(DESTDIR)$(DOCDIR)
	rm -f $(DESTDIR)$(SBINDIR)/drbd-proxy $(DESTDIR)$(SBINDIR)/drbd-proxy-ctl \
	    $(DESTDIR)$(INITDIR)/drbdproxy $(DESTDIR)$(UNITDIR)/drbdproxy.service \
	    $(addprefix $(DESTDIR)$(UNITDIR)/,$(UNITS))

clean:
	rm -rf $(VENV) build *.egg-info twisted/plugins/dropin.cache
