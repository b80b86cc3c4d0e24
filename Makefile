# The two commands a newcomer needs: `make demo` (the main job) and `make test`.
VENV := $(or $(IDPROXY_VENV),$(HOME)/.cache/idproxy/venv)
export IDPROXY_VENV := $(VENV)

.PHONY: setup demo test lint

setup:
	@bash scripts/setup.sh

demo: setup
	$(VENV)/bin/idproxy demo

test: setup
	$(VENV)/bin/python -m pytest -q

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
