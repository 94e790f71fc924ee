# The whole set-up: `make serve` starts the service, `make test` runs every check.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check
RUNTIME := $(VENV)/.runtime
TOOLS := $(VENV)/.tools

.PHONY: install runtime system-deps serve test lint bench clean

# The service alone: its pinned runtime dependencies and the project, nothing more.
runtime: $(RUNTIME)

$(RUNTIME): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PIP) -r requirements.lock
	$(PIP) --no-deps -e .
	touch $(RUNTIME)

# Everything the checks use besides: test, lint, browser and client tools (no PyTorch).
install: $(TOOLS)

$(TOOLS): $(RUNTIME)
	$(PIP) -e '.[dev,client]'
	touch $(TOOLS)

# Settings come from CONVENGINE_* variables (see README): CONVENGINE_PORT=9000 make serve
serve: runtime
	$(BIN)/python -m app

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
