"""How users reach deltaserve: the HTTP app, its routes and the `deltaserve` command.

- `app.py` builds the FastAPI app from `settings.py` (the only reader of the environment);
  `state.py` holds what requests share (engine, store, tenancy, metrics);
- `openai/`: the OpenAI protocol (request/response types), completions and chat serving,
  streaming (SSE), prompts, sampling and structured outputs;
- `routes/`: the HTTP routers (OpenAI, admin adapters, tenants, tokenize, health/metrics);
- `errors.py` maps every error (ours, the store's, tenancy's, the engine's) to OpenAI's shape;
  `metrics.py` is the only importer of prometheus_client;
- `engine_factory.py` picks the engine behind the one `EngineClient` protocol (the native
  `deltaserve.engine` or `deltaserve.backends.vllm`); `store_factory.py` builds the adapter store;
- `cli/`: `deltaserve serve | demo | compress | mix fit`.

This is the top layer: it may import every other package; none imports it.
"""
