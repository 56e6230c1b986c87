# Feedback Hub: `make demo` and `make test` work on a fresh machine (they install what is missing).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
# Debian packages the tests and the demo need (real servers, not mocks).
APT_PACKAGES := mosquitto mosquitto-clients dovecot-imapd postgresql
BENCH_APT_PACKAGES := wrk
PYTEST_ARGS ?=

.PHONY: demo test bench lint eval sysdeps bench-sysdeps venv clean

define apt_ensure
	@missing=""; for p in $(1); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq >/dev/null && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
endef

sysdeps:
	$(call apt_ensure,$(APT_PACKAGES))

bench-sysdeps:
	$(call apt_ensure,$(BENCH_APT_PACKAGES))

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing Python dependencies into $(VENV)"
	@set -o pipefail; $(PY) -m pip install -q -e ".[postgres,dev]" 2>&1 | { grep -v "^WARNING: Location" || true; }
	@rm -f $(VENV)/.installed-*; touch $@

venv: $(STAMP)

demo: sysdeps venv
	@bash samples/demo.sh

# pytest exit code 5 (no tests collected) is not a failure of the build.
test: sysdeps venv
	@$(PY) -m pytest -q $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; rc=0; fi; exit $$rc

bench: sysdeps bench-sysdeps venv
	@$(PY) -m bench

lint: venv
	@$(VENV)/bin/ruff check .

eval: venv
	@$(PY) -m normalizer.eval

clean:
	rm -rf .demo .pytest_cache .ruff_cache build *.egg-info
