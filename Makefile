# erc8004-backend: the verbs. Every target installs what it needs first.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PY := .venv/bin/python
UV_VERSION := 0.13.9
WITH_ENV := deploy/local/with-env
PYTEST_ARGS ?=
TEST_WORKERS ?= 2
# Deployment tooling for the tests: kustomize, built from its Go module into
# .run/bin once per version (the module and build caches stay under .run/go, so
# `make clean` removes them); prometheus and promtool, Debian's package.
GO ?= $(shell command -v go 2>/dev/null || echo /usr/local/go/bin/go)
TOOLS_BIN := $(CURDIR)/.run/bin
KUSTOMIZE_VERSION := v5.8.1
GO_ENV := GOBIN=$(TOOLS_BIN) GOMODCACHE=$(CURDIR)/.run/go/mod GOCACHE=$(CURDIR)/.run/go/cache GOFLAGS=-modcacherw
BACKUP_DIR ?= .run/backups

.PHONY: help deps demo evm-deps tools monitoring-deps test-rules lock infra up down run migrate schema contracts manifests test test-unit lint format status clean bench-ingest bench-matcher bench-dispatcher bench-ladder bench-indexer bench chaos backup restore fuzz-engine

help: ## list the verbs
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

.venv/.installed: requirements.lock pyproject.toml
	@test -x $(PY) || python3 -m venv .venv
	@$(PY) -m pip --version >/dev/null 2>&1 || $(PY) -m ensurepip >/dev/null
	@$(PY) -m pip install -q --disable-pip-version-check uv==$(UV_VERSION)
	@.venv/bin/uv pip install -q --python $(PY) --require-hashes -r requirements.lock
	@.venv/bin/uv pip install -q --python $(PY) --no-deps -e .
	@touch $@
	@echo "[deps] Python dependencies installed in .venv"

deps: .venv/.installed ## install Python dependencies (PostgreSQL, Java, Maven install on first start)

tools/evm/node_modules/.package-lock.json: tools/evm/package-lock.json
	@cd tools/evm && npm ci --no-audit --no-fund
	@touch $@
	@echo "[evm-deps] npm packages installed in tools/evm/node_modules"

evm-deps: tools/evm/node_modules/.package-lock.json ## npm packages of the local EVM (Hardhat, solc) into tools/evm/node_modules

$(TOOLS_BIN)/.kustomize-$(KUSTOMIZE_VERSION):
	@mkdir -p $(TOOLS_BIN)
	@echo "[tools] building kustomize $(KUSTOMIZE_VERSION) (once)"
	@$(GO_ENV) $(GO) install sigs.k8s.io/kustomize/kustomize/v5@$(KUSTOMIZE_VERSION)
	@touch $@

tools: $(TOOLS_BIN)/.kustomize-$(KUSTOMIZE_VERSION) ## build kustomize into .run/bin (cached; make test needs it)

monitoring-deps: ## prometheus and promtool from Debian's prometheus package (installed when missing)
	@deploy/local/prometheus.sh install

test-rules: deps monitoring-deps ## promtool's check and unit tests of the alert rules only
	$(WITH_ENV) $(PY) -m pytest -m promtool tests/deploy $(PYTEST_ARGS)

lock: ## re-resolve requirements.lock (and the image's requirements-runtime.lock) from pyproject.toml
	.venv/bin/uv pip compile -q pyproject.toml --extra dev --generate-hashes -o requirements.lock
	.venv/bin/uv pip compile -q pyproject.toml --generate-hashes -c requirements.lock -o requirements-runtime.lock

infra: deps ## start PostgreSQL and Kafka only
	deploy/local/stack.sh infra

up: deps ## start everything in the background; returns when all /readyz answer 200
	deploy/local/stack.sh up

run: deps ## start everything in the foreground; Ctrl-C stops all of it
	deploy/local/stack.sh run

demo: up evm-deps ## a one-minute tour: a local chain, the indexer, triggers firing; exits 0 when every action arrived
	$(WITH_ENV) $(PY) -m tools.demo

down: ## stop what make up / make run started
	deploy/local/stack.sh down

status: ## what is running
	deploy/local/stack.sh status

migrate: deps ## apply database migrations and create Kafka topics
	deploy/local/stack.sh migrate

schema: infra ## rewrite db/schema.sql from the migrations
	$(WITH_ENV) $(PY) -m tools.migrate dump

contracts: deps ## rewrite docs/openapi/*.json, docs/asyncapi.yaml, docs/schemas/event.schema.json from the models
	$(PY) -m tools.contracts

manifests: deps ## rewrite deploy/prometheus/prometheusrule.yaml (the alerts as a PrometheusRule) from erc8004-rules.yaml
	$(PY) -m tools.prometheus_rule

test: infra tools monitoring-deps evm-deps ## the whole suite against real PostgreSQL and Kafka: TEST_WORKERS (2) tests at a time, then the serial ones
	TEST_WORKERS=$(TEST_WORKERS) tests/run.sh $(PYTEST_ARGS)

test-unit: deps tools monitoring-deps ## pure unit tests only (no PostgreSQL, no Kafka)
	$(PY) -m pytest -m unit $(PYTEST_ARGS)

lint: deps ## ruff and mypy --strict
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy shared services tools tests
	.venv/bin/lint-imports

format: deps ## apply ruff's fixes and formatting
	.venv/bin/ruff check --fix .
	.venv/bin/ruff format .

clean: down ## stop everything and delete .run (databases, Kafka logs)
	rm -rf .run

backup: deps ## pg_dump -Fc of DATABASE_URL's database into .run/backups (BACKUP_DIR=... elsewhere)
	$(WITH_ENV) $(PY) -m tools.backup dump --dir $(BACKUP_DIR)

restore: deps ## pg_restore DUMP=<file> into a new database DB=<name> (default erc8004_restore_<time>)
	@test -n "$(DUMP)" || { echo "usage: make restore DUMP=.run/backups/<file>.dump [DB=<name>]"; exit 2; }
	$(WITH_ENV) $(PY) -m tools.backup restore $(DUMP) $(if $(DB),--database $(DB))

bench-ingest: infra ## ingest benchmark: events/s batched and single, latency, ratio to raw COPY
	$(WITH_ENV) $(PY) -m tools.bench_ingest

bench-matcher: infra ## matcher benchmark: events/s, per-event cost, memory and index load at 100 / 10k / 100k / 1M triggers
	$(WITH_ENV) $(PY) -m tools.bench_matcher $(BENCH_ARGS)

bench-dispatcher: infra ## dispatcher benchmark: REST actions/s, produced-to-received delay p50/p99
	$(WITH_ENV) $(PY) -m tools.bench_dispatcher

bench-ladder: infra ## a webhook attempt's CPU layer by layer, from a raw POST to the dispatcher's batches
	$(WITH_ENV) $(PY) -m tools.dispatch_ladder $(BENCH_ARGS)

bench-indexer: infra evm-deps ## indexer backfill: blocks/s and events/s end to end against a raw eth_getLogs read
	$(WITH_ENV) $(PY) -m tools.bench_indexer $(BENCH_ARGS)

bench-templates: deps ## template rendering in the dispatcher's worker processes against in-process
	$(PY) -m tools.bench_templates

bench: infra ## whole pipeline: sustained events/s, actions/s, ack-to-webhook latency, raw baselines, plots
	$(WITH_ENV) $(PY) -m tools.bench_e2e $(BENCH_ARGS)

FUZZ_MINUTES ?= 30
fuzz-engine: deps ## the engine against its reference evaluator on random triggers and histories, FUZZ_MINUTES long (30)
	$(PY) -m tools.fuzz_engine --minutes $(FUZZ_MINUTES)

chaos: infra ## kill -9 and restart every component under load, then check nothing was lost
	$(WITH_ENV) $(PY) -m tools.chaos $(CHAOS_ARGS)
