PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
STAMP = $(VENV)/.installed

.PHONY: install test lint demo bench microbench soak fuzz clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev,uvloop]'
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

clean:
	rm -rf $(VENV) .gateway .mypy_cache .pytest_cache .ruff_cache
