"""Adapter mixing (MHR): a `mix` adapter's members, weights and routing, and fitting them.

`mix.py` parses registered and ad-hoc mixes, `router.py` turns them into per-row member weights
for the engine, `materialise.py` merges a static mix into one LoRA, `fit.py` learns MHR-z routing
(`deltaserve mix fit`), `peft_io.py` reads PEFT LoRAs. It imports only types from the engine.
"""
