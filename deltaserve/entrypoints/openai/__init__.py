"""The OpenAI-compatible API: `/v1/completions` and `/v1/chat/completions`.

`protocol.py` (pydantic request/response types), `serving_completions.py` / `serving_chat.py`
(one request → engine runs → a response or an event stream), `generation.py` (a run's lifetime:
quota, adapter lease, cancellation), `deltas.py` / `sse.py` (streamed chunks), `prompts.py`,
`prompt_scores.py` (echo and prompt logprobs), `sampling.py`, `structured.py` (grammars).
"""
