"""`--engine vllm`: the server's EngineClient over vLLM's v1 async engine (AsyncLLM).

Only `client.py` (and what it imports lazily) touches vllm; `args.py`, `adapters.py` and
`config.py` (the serve settings it reads, as a protocol) are plain Python, so the server and its
tests import this package without vllm installed.
"""
