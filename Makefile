# `make test` and `make repro` create .venv on first use and install the project into it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test test-slow lint repro bench clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(VENV)/bin/ruff check dissect tests bench
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

lint: $(STAMP)
	$(VENV)/bin/ruff check dissect tests bench

# All stages when OSIE is at the configured path; otherwise the pop-out stages only, with a
# message saying how to get OSIE. `make repro PROFILE=quick` runs every stage on a few images
# into work/quick/ (pipelines/profiles/quick.yaml), never touching results/ or dvc.lock.
PROFILE ?=
repro: $(STAMP)
	@cd pipelines && export PATH="$(CURDIR)/$(VENV)/bin:$$PATH" && \
	export DISSECT_RUN_ID="$${DISSECT_RUN_ID:-$$(date -u +%Y%m%dT%H%M%SZ)}" && \
	if $(CURDIR)/$(PY) -m dissect.stages.common --check-osie; then ONLY=; else ONLY=popout; fi; \
	if [ -n "$(PROFILE)" ]; then \
	  cd .. && $(PY) -m dissect.pipeline $(PROFILE) $${ONLY:+--popout-only}; \
	else \
	  dvc repro $$ONLY; \
	fi

bench: $(STAMP)
	for f in bench/*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

clean-venv:
	rm -rf $(VENV)
