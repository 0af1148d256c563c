# The one entry point for people and CI. `make help` lists the targets.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: help venv run test test-unit test-integration lint services tools bench reliability clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s "$$(printf '\t')"

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,lint,embedded]'
	@touch $(STAMP)

venv: $(STAMP) ## create the virtualenv and install ShiftFlow with its extras

# Lint needs ShiftFlow's own dependencies and the lint tools only, not the test servers and
# fuzzers: on a fresh clone it installs in seconds rather than minutes.
LINT_STAMP = $(VENV)/.lint-installed
$(LINT_STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[lint]'
	@touch $(LINT_STAMP)

run: $(STAMP) ## run everything in one process on embedded defaults (no servers needed)
	$(VENV)/bin/shiftflow dev

services: ## start (or install, then start) PostgreSQL, Redis and RabbitMQ on loopback
	bash scripts/ensure-services.sh

tools: ## install (when missing) the programs the tools run: Chromium, ffmpeg (Debian packages)
	bash scripts/ensure-tools.sh

# The fault scenarios marked `long` run in `make reliability` only.
TEST_SELECTION = -m "not long"
# Test processes (pytest-xdist). Each test has its own database, vhost and Redis db, so
# they run side by side; tests/conftest.py keeps a file's tests in one process and every
# fault-injection test in one other, so no two of those compete for the cores. Three
# processes on a 2-core machine: most tests wait on servers, sockets and timers, so a third
# process fills the cores (about 11 minutes against 17 with two, same tree, machine quiet).
# TEST_WORKERS=0 runs everything in this process.
TEST_WORKERS ?= 3

test: $(STAMP) services tools ## unit + integration tests against real services (and the short fault scenarios)
	$(PY) -m pytest -p no:cacheprovider -n $(TEST_WORKERS) --dist loadgroup $(TEST_SELECTION) $(PYTEST_ARGS)

test-unit: $(STAMP) tools ## unit tests only (no services)
	$(PY) -m pytest -p no:cacheprovider tests/unit $(PYTEST_ARGS)

lint: $(LINT_STAMP) ## ruff, mypy and the import contracts (docs/architecture.md#layers)
	$(VENV)/bin/ruff check shiftflow tests bench scripts
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

bench: $(STAMP) services tools ## benchmarks (print ratios against a baseline measured in the same run)
	$(PY) -m pip install --quiet -e '.[bench]'
	@# wrk drives bench_ingress's peak run (C, so the load leaves the CPU to the ingress);
	@# without it the benchmark falls back to a Python load process.
	@command -v wrk >/dev/null || apt-get install -y -qq wrk >/dev/null 2>&1 || echo "wrk not installed: bench_ingress uses its Python load process"
	@# bench_soak.py (200,000 messages, about 25 minutes) runs on its own: $(PY) bench/bench_soak.py
	for b in bench/bench_*.py; do case $$b in *soak*) continue;; esac; echo "== $$b"; $(PY) $$b || exit 1; done

reliability: $(STAMP) ## every fault scenario, on servers of its own (needs rabbitmq-server, PostgreSQL, redis-server)
	$(PY) -m pytest -p no:cacheprovider tests/reliability/test_faults.py tests/reliability/test_fault_checker.py $(PYTEST_ARGS)

clean: ## remove the virtualenv and dev-mode data
	rm -rf $(VENV) .shiftflow-dev
