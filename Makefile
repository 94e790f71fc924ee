# The whole set-up: `make serve` starts the service, `make test` runs every check.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check
RUNTIME := $(VENV)/.runtime
TOOLS := $(VENV)/.tools

.PHONY: install runtime system-deps serve serve-ray stop-ray test lint bench clean

# The service alone: its pinned runtime dependencies and the project, nothing more.
runtime: $(RUNTIME)

$(RUNTIME): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PIP) -r requirements.lock
	$(PIP) --no-deps -e .
	touch $(RUNTIME)

# Everything the checks use besides: test, lint, browser and client tools, Ray Serve (no
# PyTorch). The lock constrains what they pull in (ray would upgrade protobuf past it).
install: $(TOOLS)

$(TOOLS): $(RUNTIME)
	$(PIP) -c requirements.lock -e '.[dev,client,ray]'
	touch $(TOOLS)

# Settings come from CONVENGINE_* variables (see README): CONVENGINE_PORT=9000 make serve
serve: runtime
	$(BIN)/python -m app

# Ray Serve on a local cluster of two Ray nodes (`ray start` twice): the head node's proxy on
# CONVENGINE_PORT, the second node's on CONVENGINE_RAY_WORKER_PORT (CONVENGINE_PORT + 100);
# replicas, CPUs and memory per replica from CONVENGINE_RAY_* (README, "Ray Serve"). It returns
# once both proxies answer; `make stop-ray` stops every Ray process of this machine.
serve-ray: runtime
	@$(BIN)/python -c 'import ray.serve' 2>/dev/null || $(PIP) -c requirements.lock -e '.[ray]'
	RAY_USAGE_STATS_ENABLED=0 $(BIN)/python -m app.ray_serve start

stop-ray:
	RAY_USAGE_STATS_ENABLED=0 $(BIN)/python -m app.ray_serve stop

# What the tests run for real, from Debian's packages: nginx and docker-compose (for `config`)
# for the deployment, dnsmasq (a DNS server on loopback) for nginx re-resolving replicas,
# chromium for the playground.
system-deps:
	@if ! command -v nginx >/dev/null || ! command -v docker-compose >/dev/null \
		|| ! command -v chromium >/dev/null || ! command -v dnsmasq >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			nginx docker-compose chromium dnsmasq-base; \
	fi

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint system-deps
	$(BIN)/python -m pytest

# The engine, then the service under load (see BENCHMARKS.md).
bench: install
	$(PIP) -e '.[bench]'
	$(BIN)/python -m benchmarks.engine
	$(BIN)/python -m benchmarks.service
	$(BIN)/python -m benchmarks.compression

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
