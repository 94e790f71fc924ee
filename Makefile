# The whole set-up: `make serve` starts the service, `make test` runs every check.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install system-deps serve test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,bench]'
	touch $(STAMP)

# Settings come from CONVENGINE_* variables (see README): CONVENGINE_PORT=9000 make serve
serve: install
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
	$(BIN)/python -m convengine.bench
	$(BIN)/python -m benchmarks.service
	$(BIN)/python -m benchmarks.compression

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
