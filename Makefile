# sluiceway: `make run` runs the whole pipeline on the sample API, `make test` runs the tests.
# Both set everything up first on a fresh Debian/Ubuntu machine (see scripts/).
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV := .venv
BIN := $(VENV)/bin
UV = $(shell bash scripts/bootstrap-uv.sh)
SYNC = UV_PYTHON_PREFERENCE=system "$(UV)" sync --frozen --all-packages --python '>=3.11'
# The workspace members, as the root pyproject lists them; each but common is an image.
PACKAGES := $(shell sed -n '/^members = \[/{s/^members = \[//;s/[]",]/ /g;p}' pyproject.toml)
MEMBERS := $(filter-out common,$(shell sed -n 's/^name = "sluiceway-\(.*\)"/\1/p' $(PACKAGES:%=%/pyproject.toml)))
# What mypy --strict checks: every Python file of the repository.
TYPED := services/*/src operator/src migrations tests benchmarks scripts/*.py

# The tests' real services; .ci/run and `make test` use the local ones unless these are set.
# `make check`'s drift check makes its scratch database on the first one's server.
export SLUICEWAY_TEST_DATABASE_URL ?= postgresql://sluiceway:sluiceway@127.0.0.1:5432/sluiceway
export SLUICEWAY_TEST_AMQP_URL ?= amqp://guest:guest@127.0.0.1:5672/
export SLUICEWAY_TEST_REDIS_URL ?= redis://127.0.0.1:6379/0
# PostgreSQL's superuser, with which the TLS test turns the server's TLS on for its duration.
export SLUICEWAY_TEST_PG_ADMIN_URL ?= postgresql://postgres@127.0.0.1:5432/postgres

# Image names and tag for `make images`: <REGISTRY>/sluiceway-<member>:<TAG>, built with
# `$(DOCKER) build $(BUILD_FLAGS)`. `make images-local` builds the same with podman here, as
# localhost/sluiceway/sluiceway-<member>:local unless REGISTRY or TAG is given.
REGISTRY ?= ghcr.io/sluiceway
TAG ?= $(shell sed -n 's/^appVersion: *"\(.*\)"/\1/p' charts/sluiceway/Chart.yaml)
DOCKER ?= docker
BUILD_FLAGS ?=
HELM := .tools/bin/helm

.PHONY: help install helm podman services run test test-faults test-cluster soak test-unit chart-lint images images-local bench check lint format typecheck drift clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-13s %s\n", $$1, $$2}'

install: $(BIN)/.synced ## create .venv from uv.lock (uv is installed into .tools/ when missing)

$(BIN)/.synced: uv.lock pyproject.toml $(PACKAGES:%=%/pyproject.toml)
	$(SYNC)
	@touch $@

helm: $(HELM) ## install the pinned helm into .tools/ (for chart-lint)

$(HELM): scripts/bootstrap-helm.sh
	bash scripts/bootstrap-helm.sh >/dev/null

podman: ## install podman and debootstrap from apt (as root), for images-local
	@bash scripts/bootstrap-podman.sh

services: ## find, start or install PostgreSQL, RabbitMQ and Redis on loopback
	@bash scripts/services.sh

run: install services ## run the pipeline end to end on the bundled sample API, then check the table
	$(BIN)/sluiceway demo

# Without podman the suite still runs: the built-image tests skip, saying why.
test: install helm services ## the whole test suite, on the real services (chart-lint and images-local included)
	@bash scripts/bootstrap-podman.sh || echo "test: the built-image tests will skip (above: why)"
	$(BIN)/pytest

test-faults: install services ## the fault-injection suite in full: 10 seeded writer kills, restarts, a RabbitMQ cluster, 10 M-line enqueue
	SLUICEWAY_FAULT_RUNS=10 SLUICEWAY_ENQUEUE_LINES=10000000 SLUICEWAY_CLUSTER_KEYS=1500 \
	  SLUICEWAY_FAULTS_SUITE=test-faults $(BIN)/pytest tests/faults -m "not soak" --timeout 600

test-cluster: install services ## a three-node RabbitMQ cluster of this machine's rabbitmq-server losing nodes mid-stream
	SLUICEWAY_CLUSTER_KEYS=1500 SLUICEWAY_FAULTS_SUITE=test-cluster \
	  $(BIN)/pytest tests/faults/test_cluster.py -m "" --timeout 900

soak: install services ## steady load with writer restarts for SLUICEWAY_SOAK_SECONDS (1200)
	SLUICEWAY_FAULTS_SUITE=soak $(BIN)/pytest tests/faults/test_soak.py -m soak -s --timeout 0

test-unit: install ## the unit tests alone (no services)
	$(BIN)/pytest tests/unit

chart-lint: install helm ## helm lint --strict, every rendering validated, bad values refused
	$(BIN)/pytest tests/chart tests/unit/operator/test_manifests.py

images: ## build an image per member from the one Dockerfile (needs Docker): REGISTRY=… TAG=…
	for member in $(MEMBERS); do \
	  $(DOCKER) build $(BUILD_FLAGS) --build-arg MEMBER=$$member -t $(REGISTRY)/sluiceway-$$member:$(TAG) . ; \
	done

images-local: REGISTRY = localhost/sluiceway
images-local: TAG = local
images-local: install podman ## the same images without Docker: podman, chroot isolation, a local Debian base
	$(MAKE) --no-print-directory images DOCKER=podman REGISTRY=$(REGISTRY) TAG=$(TAG) \
	  BUILD_FLAGS="$$(bash scripts/local-images.sh flags $(UV))"
	@bash scripts/local-images.sh forget $(REGISTRY) $(TAG)

bench: install services ## benchmarks, medians of rounds run side by side (not part of make test)
	$(SYNC) --group bench
	$(BIN)/python benchmarks/http_transport.py
	$(BIN)/python benchmarks/compression.py
	$(BIN)/python benchmarks/writer.py
	$(BIN)/python -m benchmarks.write_modes
	$(BIN)/python -m benchmarks.fetcher
	$(BIN)/python -m benchmarks.fetcher_budget
	$(BIN)/python benchmarks/enqueue.py
	$(BIN)/python -m benchmarks.end_to_end

check: install lint typecheck drift ## lint, typecheck and the drift check: what .ci/run holds the code to before the tests

lint: install ## ruff check and ruff format --check, over the whole repository
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install ## ruff format and autofix
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The bench group is synced first: the benchmarks import Celery, psycopg and matplotlib.
typecheck: install ## mypy --strict over the source, migrations, tests, benchmarks and scripts
	$(SYNC) --group bench
	$(BIN)/mypy $(TYPED)

# The migrations' head against the tables in code (sluiceway_writer.tables), on a scratch
# database migrated to head and dropped after (tests/scratch.py); PostgreSQL alone is needed.
drift: install ## alembic check: the migrations and sluiceway_writer.tables agree (needs PostgreSQL)
	@bash scripts/services.sh postgresql
	$(BIN)/python -m tests.scratch $(BIN)/alembic -c migrations/alembic.ini check

clean: ## remove .venv, .tools and .run
	rm -rf $(VENV) .tools .run
