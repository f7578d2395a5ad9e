PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
STAMP = $(VENV)/.installed

FUZZ_RUNS ?= 1000000

.PHONY: install test lint demo bench microbench count soak fuzz cluster clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	@# The embedded PostgreSQL ships wheels for some platforms only; without it the
	@# gateway still runs against GATEWAY_DATABASE_URL or a local initdb/pg_ctl.
	$(BIN)/pip install -q --disable-pip-version-check -e '.[embedded]' \
		|| echo "note: pgserver did not install; set GATEWAY_DATABASE_URL or install PostgreSQL"
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

demo: $(STAMP)
	$(BIN)/gateway demo

bench: $(STAMP)
	bash bench/run.sh

microbench: $(STAMP)
	$(BIN)/python bench/micro.py

# Instructions per request under callgrind: steady on a busy machine, unlike wrk.
count: $(STAMP)
	$(BIN)/python bench/instructions.py

# The hardening battery at the issue's full sizes (30 s database cut, 10,000 faulty
# upstream requests, 100,000 random keys, 500 + 500 slow clients).
soak: $(STAMP)
	GATEWAY_SOAK=1 $(BIN)/pytest --timeout=3600 tests/hardening tests/e2e/test_demo.py -s

# Several hosts as network namespaces (root): the loads of tests/cluster at full length.
cluster: $(STAMP)
	GATEWAY_CLUSTER_FULL=1 $(BIN)/pytest --timeout=3600 tests/cluster -s

# Coverage-guided fuzzing (atheris) of the key parser, the path canonicaliser and the
# policy loader, FUZZ_RUNS executions each.
fuzz: $(STAMP)
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
