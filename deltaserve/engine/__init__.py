"""The native engine: one base model, many adapters of every kind, batched in the same steps.

The loop is schedule → execute → update: `scheduler.py` picks the step's rows (decodes first,
then chunks of prefill within the token budget, prefix-cache hits skipped), `model_runner.py`
runs the decoder (`models/`, `layers/`) with each row's adapter applied by index tensors
(`adapters/`, `ops/`), `llm_engine.py` samples and updates the requests. `async_engine.py` runs
that loop in a thread behind the `protocol.EngineClient` the server drives. The engine imports
nothing else of deltaserve.
"""
