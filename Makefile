# Every target is a thin wrapper over the `objectflow` CLI (.venv/bin/objectflow --help).
SHELL := /bin/bash
UV_VERSION := 0.13.9
UV := $(shell command -v uv 2>/dev/null)
ifeq ($(UV),)
UV := $(HOME)/.local/bin/uv
endif
RUN := $(UV) run --frozen
.DEFAULT_GOAL := help

.PHONY: help bootstrap up down status clean dev demo test lint format bench chaos fuzz check dlq traces tick simulate kind-up kind-down

help: ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

bootstrap: ## install uv (if missing) and the locked Python environment
	@command -v uv >/dev/null 2>&1 || [ -x $(HOME)/.local/bin/uv ] || python3 -m pip install --user --quiet "uv==$(UV_VERSION)"
	@$(UV) sync --frozen --quiet

up: bootstrap ## install what is missing, start and provision every service, start the local runtime; MONITORING=1: and Prometheus; TRACING=1: and the trace collector
	@$(RUN) objectflow up $(if $(MONITORING),--monitoring) $(if $(TRACING),--values devstack/values-tracing.yaml)

down: bootstrap ## stop what `make up` started (by pid)
	@$(RUN) objectflow down

status: bootstrap ## each service and function: up/down, port, log; dead letters waiting
	@$(RUN) objectflow status

clean: bootstrap ## stop everything and delete .devstack/ (caches under ~/.cache/objectflow stay)
	@$(RUN) objectflow clean

check: bootstrap ## connect to every service with the current settings, one line each
	@$(RUN) objectflow check

dev: bootstrap ## start the services, run the runtime in the foreground (Ctrl-C stops it)
	@$(RUN) objectflow dev

dlq: bootstrap ## list dead-lettered events (more: .venv/bin/objectflow dlq --help)
	@$(RUN) objectflow dlq list

traces: bootstrap ## the traces the local collector kept (make up TRACING=1); one as a tree: make traces TRACE=<trace id>
	@$(RUN) objectflow traces $(TRACE)

tick: bootstrap ## fire one schedule's cron tick now: make tick SCHEDULE=camera-reconcile
	@$(RUN) objectflow tick $(SCHEDULE)

demo: up ## bring the stack up and run every domain's demo (devstack/<domain>/demo.py)
	@$(RUN) objectflow demo

simulate: bootstrap ## simulated OTA devices: make simulate COUNT=50 ARGS="--fail-rate 0.05 --register"
	@$(RUN) objectflow simulate devices --count $(or $(COUNT),50) $(ARGS)

kind-up: bootstrap ## local Knative cluster on kind + registry, chart installed with dev values (Docker)
	@$(RUN) objectflow kind up

kind-down: bootstrap ## delete the kind cluster and its registry
	@$(RUN) objectflow kind down

lint: bootstrap ## ruff format check, ruff lint, mypy on functions/
	@$(RUN) ruff format --check .
	@$(RUN) ruff check .
	@$(RUN) mypy

format: bootstrap ## apply ruff formatting and safe fixes
	@$(RUN) ruff format .
	@$(RUN) ruff check --fix .

bench: bootstrap ## run every benchmark in bench/<name>/ (bench/README.md; results in bench/out/)
	@$(RUN) objectflow bench

chaos: bootstrap ## the load and fault tests at full size (make test runs them short): ONLY=camera
	@$(RUN) objectflow up --values tests/e2e/values-e2e.yaml
	@$(RUN) objectflow chaos $(if $(ONLY),--only $(ONLY))

fuzz: bootstrap ## fuzz the parsers of outside input at length (make test runs them short): EXAMPLES=5000
	@$(RUN) objectflow fuzz $(if $(EXAMPLES),--examples $(EXAMPLES))

test: lint bootstrap ## lint, bring the stack up (with the e2e test subscribers), run every test tier
	@$(RUN) objectflow up --values tests/e2e/values-e2e.yaml
	@$(RUN) pytest tests
