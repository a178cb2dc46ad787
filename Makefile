# The README's two commands: `make demo` and `make test` (as root on Debian 12),
# and `make install`: bootsvc as a systemd service (scripts/install.sh).
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALL_VENV ?= /opt/bootsvc

.PHONY: deps test demo bench clean install

deps:
	bash scripts/install-deps.sh $(VENV)

# the runtime Debian packages, bootsvc in $(INSTALL_VENV), /usr/local/bin/bootsvc,
# the systemd unit and its user; no test peers, nothing started
install:
	bash scripts/install.sh $(INSTALL_VENV)

test: deps
	bash scripts/run-tests.sh $(PY)

DEMO ?= examples/demo.yaml

# builds the demo Linux (once), boots node01 as a diskless QEMU VM through
# bootsvc on a private network, and prints its boot timeline
demo: deps
	$(VENV)/bin/bootsvc image -c $(DEMO) build-demo
	$(VENV)/bin/bootsvc vm -c $(DEMO)
	@echo
	@echo "Next: four machines at once:  $(VENV)/bin/bootsvc vm -c $(DEMO) --count 4"
	@echo "      bases and overlays:      $(VENV)/bin/bootsvc image -c $(DEMO) list"
	@echo "      what happened:           /var/lib/bootsvc-demo/events.jsonl, /var/lib/bootsvc-demo/vm/ (serve.log, <host>.console)"
	@echo "      the config it used:      $(DEMO); README.md explains each part"

bench: deps
	$(PY) bench/iscsi_perf.py

clean:
	rm -rf $(VENV) .pytest_cache
