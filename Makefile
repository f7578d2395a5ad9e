PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
STAMP = $(VENV)/.installed
BUILT = $(VENV)/.compiled
# The request path's modules, which setup.py compiles with mypyc (pyproject.toml).
COMPILED := $(shell $(PYTHON) -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["tool"]["gateway"]["compiled"])')

FUZZ_RUNS ?= 1000000

.PHONY: install uncompile test test-plain lint docs docs-reference demo bench microbench count soak fuzz cluster deploy-test clean

install: $(BUILT)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	@# The embedded PostgreSQL ships wheels for some platforms only; without it the
	@# gateway still runs against GATEWAY_DATABASE_URL or a local initdb/pg_ctl.
	$(BIN)/pip install -q --disable-pip-version-check -e '.[embedded]' \
		|| echo "note: pgserver did not install; set GATEWAY_DATABASE_URL or install PostgreSQL"
	touch $(STAMP)

# Rebuilt whenever one of the compiled modules changes: a compiled module is imported
# before its source, so a stale build would run old code. Without a C compiler the
# gateway runs as plain Python (and no old build is left behind).
$(BUILT): $(STAMP) $(COMPILED) setup.py
	$(BIN)/pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e . \
		|| { $(MAKE) -s uncompile; \
		     echo "note: the request path was not compiled (needs a C compiler and Python's headers): it runs as plain Python"; }
	touch $(BUILT)

uncompile:
	rm -rf build *__mypyc*.so $(BUILT)
	find gateway -name '*.so' -delete

lint: $(BUILT)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

# The request path as plain Python, the fallback where there is no C compiler: the
# unit and end-to-end suites with GATEWAY_COMPILE=0 (the sources imported, not the
# build). CI runs it after `make test`.
test-plain: $(BUILT)
	GATEWAY_COMPILE=0 $(BIN)/pytest tests/unit tests/e2e

# The manual (docs/, MkDocs with the Material theme), built strictly and served on :8000.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --dev-addr 127.0.0.1:8000

# The reference pages generated from the code (a test fails when they are stale).
docs-reference: $(STAMP)
	$(BIN)/python -m gateway.reference docs/reference

demo: $(BUILT)
	$(BIN)/gateway demo

bench: $(BUILT)
	bash bench/run.sh

microbench: $(BUILT)
	$(BIN)/python bench/micro.py

# Instructions per request under callgrind: steady on a busy machine, unlike wrk.
count: $(BUILT)
	$(BIN)/python bench/instructions.py

# The hardening battery at the issue's full sizes (30 s database cut, 10,000 faulty
# upstream requests, 100,000 random keys, 500 + 500 slow clients).
soak: $(BUILT)
	GATEWAY_SOAK=1 $(BIN)/pytest --timeout=3600 tests/hardening tests/e2e/test_demo.py -s

# deploy/ run as printed: the image built and run, the compose stack brought up (podman).
deploy-test: $(BUILT)
	$(BIN)/pytest --timeout=1800 tests/deploy -s

# Several hosts as network namespaces (root): the loads of tests/cluster at full length.
cluster: $(BUILT)
	GATEWAY_CLUSTER_FULL=1 $(BIN)/pytest --timeout=3600 tests/cluster -s

# Coverage-guided fuzzing (atheris) of the key parser, the path canonicaliser and the
# policy loader, FUZZ_RUNS executions each.
fuzz: $(BUILT)
	$(BIN)/pip install -q --disable-pip-version-check atheris==3.0.0
	cd fuzz && for target in keys paths policy; do \
		../$(BIN)/python fuzz_$$target.py -runs=$(FUZZ_RUNS) > $$target.log 2>&1 \
			|| { tail -30 $$target.log; exit 1; }; \
		echo "fuzz_$$target: $$(grep -E '^Done' $$target.log)"; \
	done
	$(BIN)/pip install -q --disable-pip-version-check schemathesis==4.32.5
	$(BIN)/python fuzz/admin_api.py

clean:
	@# Also the demo's state: the shipped config keeps it beside itself (config/.gateway).
	rm -rf $(VENV) .gateway config/.gateway .mypy_cache .pytest_cache .ruff_cache
	$(MAKE) -s uncompile
