"""`--engine vllm`: the server's EngineClient over vLLM's v1 async engine (AsyncLLM).

Only `client.py` (and what it imports lazily) touches vllm; `args.py` and `adapters.py` are plain
Python, so the server and its tests import this package without vllm installed.
"""
