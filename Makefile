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
# The demo's own databases: never ETL_*_URL, which may point at production (the demo writes its source).
DEMO_SOURCE_URL ?= $(MYSQL_URL)/clinic
DEMO_REPLICA_URL ?= $(MYSQL_URL)/clinic_replica
DEMO_ANALYTICS_URL ?= $(PG_URL)/analytics

# One env file for make and `etl` (config/settings.py reads the same file): ETL_SOURCE_URL, _REPLICA_URL,
# _ANALYTICS_URL, _ANALYTICS_SCHEMA, _CONFIG, one KEY=value a line. `make demo` writes it for the demo
# databases; write your own instead (then `make demo` leaves it alone). Precedence, as for `etl`:
# the command line, then the environment, then this file, then the defaults below.
ETL_ENV_FILE ?= build/etl.env
ETL_ENV_VARS := ETL_SOURCE_URL ETL_REPLICA_URL ETL_ANALYTICS_URL ETL_ANALYTICS_SCHEMA ETL_CONFIG
ifneq ($(wildcard $(ETL_ENV_FILE)),)
$(foreach v,$(ETL_ENV_VARS),$(if $(filter environment,$(origin $(v))),$(eval _env_$(v) := $(value $(v)))))
include $(ETL_ENV_FILE)
$(foreach v,$(ETL_ENV_VARS),$(if $(_env_$(v)),$(eval $(v) := $(_env_$(v)))))
endif

export ETL_SOURCE_URL ?= $(DEMO_SOURCE_URL)
export ETL_REPLICA_URL ?= $(DEMO_REPLICA_URL)
export ETL_ANALYTICS_URL ?= $(DEMO_ANALYTICS_URL)
export ETL_ANALYTICS_SCHEMA ?= raw
ifdef ETL_CONFIG
export ETL_CONFIG
endif
export ETL_ENV_FILE
DEMO_ENV = ETL_SOURCE_URL='$(DEMO_SOURCE_URL)' ETL_REPLICA_URL='$(DEMO_REPLICA_URL)' \
  ETL_ANALYTICS_URL='$(DEMO_ANALYTICS_URL)' ETL_ANALYTICS_SCHEMA=raw ETL_CONFIG='$(CURDIR)/$(DEMO_DIR)/tables.yml'
DEMO_MARK := \# written by `make demo`

.PHONY: setup test demo demo-data demo-env bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

demo-data: setup
	$(BIN)/python bench/gen_dental.py --url "$(DEMO_SOURCE_URL)" --scale $(DEMO_SCALE)
	$(BIN)/python -m tasks.pg_admin create-database "$(DEMO_ANALYTICS_URL)"

# The demo's settings as the env file, so what follows (`etl status`, `make blocks`, `make worker`, the
# deployed runs) uses the demo without any export. An env file `make demo` did not write is kept.
demo-env:
	@mkdir -p $(dir $(ETL_ENV_FILE))
	@if [ -f '$(ETL_ENV_FILE)' ] && ! head -n 1 '$(ETL_ENV_FILE)' | grep -q '^$(DEMO_MARK)'; then \
	  echo "make demo: $(ETL_ENV_FILE) was not written by make demo: left as it is (the demo runs on its own databases)"; \
	else \
	  printf '%s\n' '$(DEMO_MARK) (the demo databases); replace it with your own settings' \
	    'ETL_SOURCE_URL=$(DEMO_SOURCE_URL)' 'ETL_REPLICA_URL=$(DEMO_REPLICA_URL)' \
	    'ETL_ANALYTICS_URL=$(DEMO_ANALYTICS_URL)' 'ETL_ANALYTICS_SCHEMA=raw' \
	    'ETL_CONFIG=$(CURDIR)/$(DEMO_DIR)/tables.yml' > '$(ETL_ENV_FILE).tmp' && mv '$(ETL_ENV_FILE).tmp' '$(ETL_ENV_FILE)'; \
	  echo "wrote $(ETL_ENV_FILE) (read by make and etl: etl status, etl plan, make blocks, make worker)"; \
	fi

demo: demo-data
	mkdir -p $(DEMO_DIR)
	$(DEMO_ENV) $(BIN)/etl discover --output $(DEMO_DIR)/tables.yml
	@$(MAKE) --no-print-directory demo-env
	$(DEMO_ENV) $(BIN)/etl plan --config $(DEMO_DIR)/tables.yml
	@# The demo source is regenerated each time (rows rewritten with their old timestamps), which no
	@# watermark can see: reload in full. Run `etl run --config $(DEMO_DIR)/tables.yml` for an incremental run.
	$(DEMO_ENV) $(BIN)/etl run --config $(DEMO_DIR)/tables.yml --full-refresh
	$(DEMO_ENV) $(BIN)/etl verify --config $(DEMO_DIR)/tables.yml

clean:
	rm -rf build .pytest_cache
include mk/prefect.mk
include mk/bench.mk
