# The two commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_DIR ?= demo-model
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test lint bench loadtest clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Runtime install; the stamp is refreshed when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $(VENV)/.installed $@

$(DEMO_DIR)/.complete: $(VENV)/.installed
	$(BIN)/deltaserve demo --out $(DEMO_DIR)

run: $(DEMO_DIR)/.complete
	$(BIN)/deltaserve serve --model $(DEMO_DIR)/base --adapter-dir $(DEMO_DIR)/adapters \
		--served-model-name demo --host $(HOST) --port $(PORT)

test: $(VENV)/.installed-test
	$(BIN)/python -m tests.redis_binary >/dev/null
	$(BIN)/python -m pytest -q

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .

bench: $(VENV)/.installed-test
	$(BIN)/python -m benchmarks.run_w

# HOST=http://...: load that server; otherwise start the demo server on a free loopback port.
LOADTEST_DURATION ?= 30s
LOADTEST_USERS ?= 8
LOADTEST_OUT ?= loadtest-results
loadtest: $(VENV)/.installed-test $(if $(findstring ://,$(HOST)),,$(DEMO_DIR)/.complete)
	$(BIN)/python -m loadtests.run --host "$(HOST)" --duration $(LOADTEST_DURATION) \
		--users $(LOADTEST_USERS) --out $(LOADTEST_OUT) \
		--model $(DEMO_DIR)/base --adapter-dir $(DEMO_DIR)/adapters --served-model-name demo

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache $(LOADTEST_OUT)
