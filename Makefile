# sqs-scheduler: the two commands a newcomer needs are `make run` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

services: ## start PostgreSQL (if down) and the local SQS endpoint (moto) with the queues
	scripts/dev-services up

services-down: ## stop what `make services` started
	scripts/dev-services down

test: services ## all tests, against the real PostgreSQL and the local SQS endpoint
	eval "$$(scripts/dev-services env)" && cargo test --locked

migrate: ## apply migrations to the configured database
	cargo run --locked -- migrate

bench-store: ## store benchmark (release-grade build)
	cargo run --locked --profile perf -- bench store

fmt: ## format the code
	cargo fmt --all

.PHONY: help services services-down test migrate bench-store fmt
