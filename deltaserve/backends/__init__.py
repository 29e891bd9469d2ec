"""Engines other than the native one, behind the same `deltaserve.engine.protocol.EngineClient`.

`vllm/`: `--engine vllm`, the server over vLLM's engine. Backends sit beside `deltaserve.engine`:
they import its types (requests, outputs, sampling params), never the HTTP layer.
"""
