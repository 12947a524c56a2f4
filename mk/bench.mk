# The benchmark harness (bench/run.py; how to read its table: bench/README.md).
# Included from the Makefile (uses its `setup` target, BIN, MYSQL_URL and PG_URL).
#
#   make bench                     generate bench_src at SCALE (default 1, ~3M rows), run every stage and
#                                  anchor, print one table (stage, rows, s, rows/s, peak RSS, ratio, data check)
#   make bench SCALE=0.1 BENCH_ARGS='--reps 3 --stages analytics,anchors'
#   make bench BENCH_ARGS='--no-gen --stages replica'      reuse the data generated last time
#   make bench BENCH_ARGS='--no-gen --stages incremental'  full refresh, 1% churn on procedurelog, incremental
#                                  `etl run`: its wall time / the full refresh's (goal < 0.05), per table and
#                                  phase, delete detection timed alone (~8 min at scale 1)
#   make bench BENCH_ARGS='--scales 1,4 --stages replica,analytics --tiny-tables 0'   peak RSS vs size
#   make bench-escaping            text with a line break every 49 bytes at 1, 4, 16 MB: the linear placeholder
#                                  escaping vs the old nested REPLACE (1 MB only; ~20-60 s of server CPU),
#                                  server seconds, reader decode seconds, exactness (bench/escaping.py)
#   make bench-tools               install pgloader (a Debian package; needs root), used as an anchor
#
# Scale 1 takes about 20 minutes on the shared 2-core box (the incremental stage adds ~4 of them: churn,
# the incremental run and its data check); only databases named bench_* are dropped or created, and the
# incremental stage changes bench_src (1% of procedurelog updated, 1% inserted, per run).

SCALE ?= 1
BENCH_ARGS ?=

ESCAPING_ARGS ?= --sizes 1,4,16 --old-max-mb 1

.PHONY: bench bench-tools bench-escaping

bench: setup
	$(BIN)/python bench/run.py --scale $(SCALE) --mysql-url '$(MYSQL_URL)' --pg-url '$(PG_URL)' $(BENCH_ARGS)
	$(BIN)/python bench/escaping.py --mysql-url '$(MYSQL_URL)' $(ESCAPING_ARGS)

bench-escaping: setup
	$(BIN)/python bench/escaping.py --mysql-url '$(MYSQL_URL)' $(ESCAPING_ARGS)

bench-tools:
	@command -v pgloader >/dev/null || { apt-get update -qq && apt-get install -y -qq pgloader; }
	@pgloader --version | head -1
