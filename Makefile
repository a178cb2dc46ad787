# The README's two commands: `make demo` and `make test` (as root on Debian 12).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: deps test demo bench clean

deps:
	bash scripts/install-deps.sh $(VENV)

test: deps
	bash scripts/run-tests.sh $(PY)

demo: deps
	@echo "make demo: the diskless QEMU boot demo lands with issue #7; for now serve an image with:" >&2
	@echo "  $(VENV)/bin/bootsvc export IMAGE --listen 127.0.0.1:3260" >&2
	@exit 2

bench: deps
	$(PY) bench/iscsi_perf.py

clean:
	rm -rf $(VENV) .pytest_cache
