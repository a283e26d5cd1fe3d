# sqs-scheduler: the two commands a newcomer needs are `make run` and `make test`.
SHELL := /bin/bash
OBJECTS ?= 1000
.DEFAULT_GOAL := help

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

services: ## start PostgreSQL (if down) and the local SQS endpoint (moto) with the queues
	scripts/dev-services up

services-down: ## stop what `make services` started
	scripts/dev-services down

run: services ## the whole pipeline over the local SQS endpoint with a demo workload, then a summary
	# The emulator rescans a whole queue for every message it delivers: keep its queues short.
	eval "$$(scripts/dev-services env)" && SCHEDULER_ACQUIRER__MAX_OUTBOUND_DEPTH=30 SCHEDULER_ACQUIRER__BATCH_SIZE=30 \
	  cargo run --locked -- load --objects $(OBJECTS) --via sqs --with-pipeline --max-backlog 30

run-local: ## the same on the in-process transport (needs only PostgreSQL)
	scripts/dev-services pg
	eval "$$(scripts/dev-services env)" && cargo run --locked -- load --objects $(OBJECTS) --via local

test: services ## all tests: cargo test against the real PostgreSQL and SQS endpoint, then the fast chaos scenarios
	@mkdir -p .dev
	@# A previous run's logs must never be summarised as this run's (a failed setup or build writes none).
	rm -f .dev/test.log .dev/chaos-fast.log
	set -o pipefail; if envs="$$(scripts/dev-services env)"; then eval "$$envs"; \
	    cargo test --locked --no-fail-fast 2>&1 | tee .dev/test.log; status=$$?; \
	  else echo "scripts/dev-services env failed"; status=1; fi; \
	  cargo build --locked --bin sqs-scheduler && scripts/chaos --fast 2>&1 | tee .dev/chaos-fast.log; \
	  chaos=$$?; \
	  if grep -q '^test result:' .dev/test.log 2>/dev/null; then \
	    awk '/^test result:/ {p += $$4; f += $$6} END {printf "cargo test: %d passed, %d failed\n", p, f}' .dev/test.log; \
	  else echo "cargo test: NO RESULTS (setup or compilation failed, exit $$status)"; fi; \
	  if grep -qE '^[0-9]+ passed, [0-9]+ failed$$' .dev/chaos-fast.log 2>/dev/null; then \
	    awk '/^[0-9]+ passed, [0-9]+ failed$$/ {p = $$1; f = $$3} END {printf "chaos (fast): %d passed, %d failed\n", p, f}' .dev/chaos-fast.log; \
	  else echo "chaos (fast): NO RESULTS (build or harness failed, exit $$chaos)"; fi; \
	  if [ $$status -ne 0 ] || [ $$chaos -ne 0 ]; then echo "make test: FAILED"; exit 1; fi; \
	  cat .dev/test.log .dev/chaos-fast.log | awk '/^test result:/ {p += $$4; f += $$6} /^[0-9]+ passed, [0-9]+ failed$$/ {p += $$1; f += $$3} END {printf "%d passed, %d failed\n", p, f}'

migrate: ## apply migrations to the configured database
	cargo run --locked -- migrate

bench: services ## issue 18's table (bench compare, with Graphile Worker beside it; ~10 min), then every other benchmark
	eval "$$(scripts/dev-services env)" && SCHEDULER_LOG__LEVEL=warn cargo run --locked --profile perf -- bench compare --with-peers
	$(MAKE) bench-detail

bench-compare: services ## only issue 18's table (bench compare --with-peers); BENCH_ARGS='--only w1,latency --quick' for a subset
	eval "$$(scripts/dev-services env)" && SCHEDULER_LOG__LEVEL=warn cargo run --locked --profile perf -- bench compare --with-peers $(BENCH_ARGS)

bench-detail: services ## every benchmark command's own detailed output (profile perf)
	eval "$$(scripts/dev-services env)" && cargo run --locked --profile perf -- bench store
	eval "$$(scripts/dev-services env)" && cargo run --locked --profile perf -- bench pipeline --transport memory
	# The emulator rescans a whole queue for every message it delivers: keep its queues short (as `make run` does).
	eval "$$(scripts/dev-services env)" && SCHEDULER_ACQUIRER__MAX_OUTBOUND_DEPTH=30 SCHEDULER_ACQUIRER__BATCH_SIZE=30 \
	  cargo run --locked --profile perf -- bench pipeline --transport sqs --tasks 2000 --latency-samples 0
	eval "$$(scripts/dev-services env)" && cargo run --locked --profile perf -- bench http
	$(MAKE) bench-rabbitmq

bench-rabbitmq: services ## RabbitMQ: one process, then separate processes (50,000 tasks; 1 and 10 per message), then Celery 5
	eval "$$(scripts/dev-services env)" && cargo run --locked --profile perf -- bench pipeline --transport rabbitmq --tasks 50000 --latency-samples 1000
	eval "$$(scripts/dev-services env)" && cargo run --locked --profile perf -- bench pipeline --transport rabbitmq --tasks 50000 --latency-samples 0 --tasks-per-message 10
	eval "$$(scripts/dev-services env)" && cargo run --locked --profile perf -- bench processes --tasks 50000 --workers 2
	eval "$$(scripts/dev-services env)" && cargo run --locked --profile perf -- bench processes --tasks 50000 --workers 2 --tasks-per-message 10
	scripts/bench-celery 50000 2

chaos: ## the whole chaos suite (all 14 scenarios): roles as processes, one fault each, private PostgreSQL + moto
	cargo build --locked --bin sqs-scheduler
	scripts/chaos

chaos-fast: ## the fast chaos scenarios only (< 3 min): poison, duplicates, pg-terminate, kill-worker, concurrency-1
	cargo build --locked --bin sqs-scheduler
	scripts/chaos --fast

fmt: ## format the code
	cargo fmt --all

.PHONY: help services services-down run run-local test migrate bench bench-compare bench-detail bench-rabbitmq chaos chaos-fast fmt
