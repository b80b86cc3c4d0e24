# The two commands a newcomer needs: `make demo` (the main job) and `make test`.
VENV := $(or $(IDPROXY_VENV),$(HOME)/.cache/idproxy/venv)
export IDPROXY_VENV := $(VENV)

.PHONY: setup demo test lint

setup:
	@bash scripts/setup.sh

demo: setup
	$(VENV)/bin/idproxy demo

# The full suite (integration tests on the broker ladder: Apache Kafka where Java and the
# jars are present), then the smoke subset again on the embedded Tansu broker (rung 4).
test: setup
	$(VENV)/bin/python -m pytest -q
	IDPROXY_KAFKA_RUNG=4 $(VENV)/bin/python -m pytest -q -m smoke

# ruff, then the layers and the no-cycles rule of pyproject.toml's [tool.importlinter]
lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/lint-imports --no-cache
