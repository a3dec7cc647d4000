# fractal_hostd — every command works as root on a fresh Debian 12 machine: each target installs
# what it needs first (idempotent, quick when already done).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install system-deps docker test-image run runstaging runprod test lint format bench clean deb

# Not -q: a first install takes about a minute, and silence that long looks like a hang.
$(STAMP): pyproject.toml
	@$(PY) -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null || { echo "==> creating $(VENV)"; rm -rf $(VENV); python3 -m venv $(VENV); }
	@echo "==> installing fractal-hostd and its dev tools into $(VENV) (first time: about a minute)"
	set -o pipefail; $(PY) -m pip install --disable-pip-version-check -e '.[dev]' 2>&1 | { grep --line-buffered -E '^(Collecting|Installing|Successfully|ERROR)' || true; }
	@touch $(STAMP)
	@echo "==> $(VENV) ready"

## install: the Python virtualenv with the service and its dev tools
install: $(STAMP)

## system-deps: Debian packages (docker.io, busybox-static, rclone, fuse3, wrk)
system-deps:
	@scripts/install-system-deps.sh

## docker: make sure a Docker engine answers (starts or installs Debian's dockerd, and says so)
docker: system-deps
	@scripts/ensure-docker.sh

## test-image: the busybox image the tests run (docker import, no registry needed)
test-image: docker
	@scripts/build-test-image.sh

## run: the service in localdev (no webserver, static metadata, API on 127.0.0.1:4678)
run: install docker
	@echo "==> starting fractal-hostd (localdev) on https://127.0.0.1:4678; Ctrl-C stops it"
	APP_ENV=localdev $(VENV)/bin/fractal-hostd run

runstaging: install docker
	APP_ENV=staging $(VENV)/bin/fractal-hostd run

## runprod: prod settings with the production Sentry (needs SENTRY_DSN and the auth secret)
runprod: install docker
	USE_PROD_SENTRY=1 APP_ENV=prod $(VENV)/bin/fractal-hostd run

## test: the whole suite, against a real Docker engine and the fakes
test: install test-image
	$(PY) -m pytest -q $(PYTEST_ARGS)

.PHONY: chaos
## chaos: seeded faults against the real service (SEED= replays; STEPS=, DURATION= seconds,
## ENGINE=fake|real|both, CHAOS_ARGS= e.g. "--enable disk_full" or "--only stream_cut,kill")
chaos: install
	$(PY) -m tests.chaos $(if $(SEED),--seed $(SEED)) --steps $(or $(STEPS),200) \
		$(if $(DURATION),--duration $(DURATION)) --engine $(or $(ENGINE),fake) $(CHAOS_ARGS)

## lint: ruff (incl. ASYNC rules), format check, mypy --strict
lint: install
	$(VENV)/bin/ruff check fractal_hostd tests bench
	$(VENV)/bin/ruff format --check fractal_hostd tests bench
	$(VENV)/bin/mypy --strict fractal_hostd
	$(VENV)/bin/mypy --strict tests

format: install
	$(VENV)/bin/ruff format fractal_hostd tests bench
	$(VENV)/bin/ruff check --fix fractal_hostd tests bench

## deb: dist/fractal-hostd_<version>_<arch>.deb (virtualenv on Debian's python3, docs/deployment.md)
deb:
	@scripts/build-deb.sh

## bench: measured numbers into bench/results/*.json (never asserted by tests)
bench: install test-image
	@mkdir -p bench/results
	$(PY) bench/bench_docker.py
	$(PY) bench/bench_api.py
	$(PY) bench/bench_floors.py
	$(PY) bench/bench_telemetry.py
	$(PY) bench/bench_startup.py
	$(PY) bench/bench_priority.py
	$(PY) -m bench.bench_reconcile
	$(PY) bench/bench_flood.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis bench/results *.egg-info dist
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
