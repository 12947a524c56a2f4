# A local Prefect server, the connector blocks, the deployments of prefect.yaml and a worker.
# Included from the Makefile (uses its `setup` target and BIN). In order:
#
#   make server   Prefect server + UI on PostgreSQL, in the background   build/prefect-server.{pid,log,db}
#   make blocks   block types + the three connector blocks from ETL_*_URL
#   make deploy   the work pool (created if missing), the global concurrency limit `etl-source` (and
#                 with ETL_SOURCES one `etl-source-<clinic>` per clinic),
#                 every deployment in prefect.yaml, and with ETL_NOTIFY_WEBHOOK set the notification
#                 block `etl-notify` + automations on Failed, Crashed and Late (ETL_NOTIFY_LATE_MINUTES) runs
#   make worker   a worker polling the pool, in the background, with ETL_CONFIG  build/prefect-worker.{pid,log}
#   make stop     stop the worker and the server started above, by PID (whole process group)
#
# or all at once: `make server blocks deploy worker`. UI: http://127.0.0.1:4200 (PREFECT_PORT).
# Only these recipes talk to this server: PREFECT_API_URL is passed to them, not exported to the
# rest of the Makefile (`make test` starts servers of its own).

PREFECT_HOST ?= 127.0.0.1
PREFECT_PORT ?= 4200
PREFECT_API_URL ?= http://$(PREFECT_HOST):$(PREFECT_PORT)/api
# The server's own database. Not SQLite: it answers 503 "database is locked" when the parallel table
# subflows report their states at the same time. Named for this checkout (a hash of its path), created
# with a comment saying so (tasks/server_db.py); a database that exists without that comment may be
# another server's, and `make server` refuses it rather than start on it.
PREFECT_SERVER_DB ?= prefect_etl_$(shell printf '%s' '$(CURDIR)' | sha1sum | cut -c1-10)
PREFECT_SERVER_DB_URL ?= postgresql+asyncpg://postgres@127.0.0.1:5432/$(PREFECT_SERVER_DB)
PREFECT_SERVER_TIMEOUT ?= 120

# Read by prefect.yaml at deploy time ({{ $ETL_WORK_POOL }} ...); see the comments there.
ETL_WORK_POOL ?= etl-process
ETL_WORK_POOL_TYPE ?= process
ETL_IMAGE ?= mysql-analytics-etl:latest
ETL_CODE_DIR ?= $(CURDIR)
# Table runs of one pipeline run (dispatch=deployment) reading the production source at the same time,
# over every worker: the slots of the Prefect global concurrency limit `etl-source`.
ETL_SOURCE_SLOTS ?= 2

PREFECT_RUN_DIR := build
PREFECT_ENV = PREFECT_API_URL='$(PREFECT_API_URL)' PREFECT_CLI_PROMPT=false PREFECT_SERVER_ANALYTICS_ENABLED=false
PREFECT := $(PREFECT_ENV) $(BIN)/prefect

# The worker's flow runs read the table config from ETL_CONFIG (the env file's, e.g. the demo's),
# as an absolute path: the flow run's working directory is ETL_CODE_DIR, not where make ran.
WORKER_CONFIG_ENV = $(if $(ETL_CONFIG),ETL_CONFIG='$(abspath $(ETL_CONFIG))') ETL_ENV_FILE='$(abspath $(ETL_ENV_FILE))'

.PHONY: server blocks deploy worker stop

# `setsid` makes the process the leader of a new process group, so `make stop` can end it and every
# child it started (the server's uvicorn, the worker's flow-run subprocesses) with one signal.
# `env --default-signal=INT`: a command put in the background by a shell (`&`) starts with SIGINT
# ignored, and the worker turns SIGTERM into a SIGINT to itself: without this it never shut down and
# `make stop` waited its 20 s for the SIGKILL.
server: setup
	@mkdir -p $(PREFECT_RUN_DIR)
	@pidf=$(PREFECT_RUN_DIR)/prefect-server.pid; \
	if [ -f $$pidf ] && kill -0 "$$(cat $$pidf)" 2>/dev/null; then \
	  echo "prefect server already running (pid $$(cat $$pidf)), $(PREFECT_API_URL)"; exit 0; fi; \
	$(BIN)/python -m tasks.server_db claim '$(PREFECT_SERVER_DB_URL)' '$(CURDIR)' || exit 1; \
	$(BIN)/python -c 'import sys; from tasks.connections import describe_url; print(describe_url(sys.argv[1]))' \
	  '$(PREFECT_SERVER_DB_URL)' > $(PREFECT_RUN_DIR)/prefect-server.db; \
	PREFECT_API_DATABASE_CONNECTION_URL='$(PREFECT_SERVER_DB_URL)' PREFECT_UI_API_URL='$(PREFECT_API_URL)' \
	  $(PREFECT_ENV) env --default-signal=INT setsid nohup $(BIN)/prefect server start --host $(PREFECT_HOST) --port $(PREFECT_PORT) \
	  </dev/null >$(PREFECT_RUN_DIR)/prefect-server.log 2>&1 & \
	pid=$$!; echo $$pid > $$pidf; \
	for i in $$(seq 1 $(PREFECT_SERVER_TIMEOUT)); do \
	  if ! kill -0 $$pid 2>/dev/null; then \
	    echo "prefect server exited; last lines of $(PREFECT_RUN_DIR)/prefect-server.log:" >&2; \
	    tail -n 30 $(PREFECT_RUN_DIR)/prefect-server.log >&2; rm -f $$pidf; exit 1; fi; \
	  if $(BIN)/python -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + "/health", timeout=2)' \
	       '$(PREFECT_API_URL)' 2>/dev/null; then \
	    echo "prefect server up (pid $$pid): $(PREFECT_API_URL), UI http://$(PREFECT_HOST):$(PREFECT_PORT)"; exit 0; fi; \
	  sleep 1; \
	done; \
	echo "prefect server not healthy after $(PREFECT_SERVER_TIMEOUT)s; see $(PREFECT_RUN_DIR)/prefect-server.log" >&2; exit 1

blocks: setup
	$(PREFECT) block register -m prefect_sqlalchemy
	$(PREFECT_ENV) $(BIN)/etl blocks register

deploy: setup
	@$(PREFECT) work-pool inspect '$(ETL_WORK_POOL)' >/dev/null 2>&1 || \
	  $(PREFECT) work-pool create '$(ETL_WORK_POOL)' --type '$(ETL_WORK_POOL_TYPE)'
	@if $(PREFECT) global-concurrency-limit inspect etl-source >/dev/null 2>&1; then \
	  $(PREFECT) global-concurrency-limit update etl-source --limit $(ETL_SOURCE_SLOTS); \
	else $(PREFECT) global-concurrency-limit create etl-source --limit $(ETL_SOURCE_SLOTS); fi
	@# Many clinics (ETL_SOURCES): one limit per clinic's source server, etl-source-<clinic>, same slots.
	@if [ -n "$$ETL_SOURCES" ]; then for n in $$($(PREFECT_ENV) $(BIN)/etl sources --names); do 	  if $(PREFECT) global-concurrency-limit inspect etl-source-$$n >/dev/null 2>&1; then 	    $(PREFECT) global-concurrency-limit update etl-source-$$n --limit $(ETL_SOURCE_SLOTS); 	  else $(PREFECT) global-concurrency-limit create etl-source-$$n --limit $(ETL_SOURCE_SLOTS); fi; done; fi
	ETL_WORK_POOL='$(ETL_WORK_POOL)' ETL_IMAGE='$(ETL_IMAGE)' ETL_CODE_DIR='$(ETL_CODE_DIR)' \
	  $(PREFECT) --no-prompt deploy --all
	@# Failed, Crashed and Late runs reported by the server (a dead worker runs no flow code that could tell).
	@if [ -n "$$ETL_NOTIFY_WEBHOOK" ]; then $(PREFECT_ENV) $(BIN)/etl notifications setup; \
	else echo "ETL_NOTIFY_WEBHOOK is not set: no notification automations (set it and run make deploy again)"; fi

worker: setup
	@mkdir -p $(PREFECT_RUN_DIR)
	@pidf=$(PREFECT_RUN_DIR)/prefect-worker.pid; \
	if [ -f $$pidf ] && kill -0 "$$(cat $$pidf)" 2>/dev/null; then \
	  echo "prefect worker already running (pid $$(cat $$pidf))"; exit 0; fi; \
	$(PREFECT_ENV) $(WORKER_CONFIG_ENV) env --default-signal=INT setsid nohup $(BIN)/prefect worker start --pool '$(ETL_WORK_POOL)' --type '$(ETL_WORK_POOL_TYPE)' \
	  </dev/null >$(PREFECT_RUN_DIR)/prefect-worker.log 2>&1 & \
	pid=$$!; echo $$pid > $$pidf; sleep 3; \
	if ! kill -0 $$pid 2>/dev/null; then \
	  echo "prefect worker exited; last lines of $(PREFECT_RUN_DIR)/prefect-worker.log:" >&2; \
	  tail -n 30 $(PREFECT_RUN_DIR)/prefect-worker.log >&2; rm -f $$pidf; exit 1; fi; \
	echo "prefect worker up (pid $$pid) on pool $(ETL_WORK_POOL), table config $(if $(ETL_CONFIG),$(abspath $(ETL_CONFIG)),config/tables.yml); log $(PREFECT_RUN_DIR)/prefect-worker.log"

# Worker first (its flow runs report to the server), then the server. Each was started as the leader
# of its own process group; the group gets SIGTERM, and so does every process below it that left the
# group (the worker starts each flow run in a session of its own), SIGKILL after 20 s. A PID whose
# process is not a prefect command (a stale file after a reboot) is not signalled.
stop: setup
	@desc() { for c in $$(ps -o pid= --ppid "$$1" 2>/dev/null); do echo $$c; desc $$c; done; }; \
	for name in worker server; do \
	  pidf=$(PREFECT_RUN_DIR)/prefect-$$name.pid; [ -f $$pidf ] || continue; pid=$$(cat $$pidf); \
	  if ps -o args= -p $$pid 2>/dev/null | grep -q prefect; then \
	    below=$$(desc $$pid); \
	    kill -TERM -- -$$pid 2>/dev/null || kill -TERM $$pid 2>/dev/null; \
	    [ -z "$$below" ] || kill -TERM $$below 2>/dev/null; \
	    for i in $$(seq 1 40); do \
	      kill -0 -- -$$pid 2>/dev/null || { [ -n "$$below" ] && kill -0 $$below 2>/dev/null; } || break; sleep 0.5; done; \
	    kill -KILL -- -$$pid 2>/dev/null; [ -z "$$below" ] || kill -KILL $$below 2>/dev/null; \
	    echo "stopped prefect $$name (pid $$pid)"; \
	  fi; \
	  rm -f $$pidf; \
	done; true
