# Two commands set everything up on a fresh machine:
#   make demo   install, generate a demo clinic database, discover it, run the pipeline, print a summary
#   make test   install and run the test suite against the local MariaDB and PostgreSQL
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

MYSQL_URL ?= mysql+pymysql://root@127.0.0.1:3306
PG_URL ?= postgresql+psycopg2://postgres@127.0.0.1:5432
DEMO_SCALE ?= 0.02
DEMO_DIR := build/demo

export ETL_SOURCE_URL ?= $(MYSQL_URL)/clinic
export ETL_REPLICA_URL ?= $(MYSQL_URL)/clinic_replica
export ETL_ANALYTICS_URL ?= $(PG_URL)/analytics
export ETL_ANALYTICS_SCHEMA ?= raw

.PHONY: setup test demo demo-data bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

demo-data: setup
	$(BIN)/python bench/gen_dental.py --url "$(ETL_SOURCE_URL)" --scale $(DEMO_SCALE)
	$(BIN)/python -m tasks.pg_admin create-database "$(ETL_ANALYTICS_URL)"

demo: demo-data
	mkdir -p $(DEMO_DIR)
	$(BIN)/etl discover --output $(DEMO_DIR)/tables.yml
	$(BIN)/etl plan --config $(DEMO_DIR)/tables.yml
	@# The demo source is regenerated each time (rows rewritten with their old timestamps), which no
	@# watermark can see: reload in full. Run `etl run --config $(DEMO_DIR)/tables.yml` for an incremental run.
	$(BIN)/etl run --config $(DEMO_DIR)/tables.yml --full-refresh
	$(BIN)/etl verify --config $(DEMO_DIR)/tables.yml

clean:
	rm -rf build .pytest_cache
include mk/prefect.mk
include mk/bench.mk
