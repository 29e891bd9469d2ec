"""Structured outputs: OpenAI's `response_format` and vLLM's `structured_outputs` → a grammar.

The request's spec is compiled by the engine (xgrammar, cached by the spec's hash) in a worker
thread, waiting at most --grammar-compile-timeout-s: a spec that does not compile, or not in
time, is a 400 naming the field. The compiled grammar rides on the SamplingParams.
"""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor

from deltaserve.engine.grammar import Grammar, GrammarError, GrammarSpec
from deltaserve.engine.threads import single_threaded
from deltaserve.entrypoints.errors import BadRequestError
from deltaserve.entrypoints.openai.protocol import SamplingFields
from deltaserve.entrypoints.state import ServerState

_COMPILERS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="grammar-compile",
                                initializer=single_threaded)
"""Compiles off the event loop; two workers bound the CPU a burst of new schemas can take."""


def grammar_spec(req: SamplingFields) -> tuple[GrammarSpec, str] | None:
    """The spec a request asks for and the field that asked (None: free text)."""
    rf, so = req.response_format, req.structured_outputs
    if rf is not None and rf.type != "text" and so is not None:
        raise BadRequestError(
            "Use either response_format or structured_outputs, not both.",
            param="structured_outputs",
        )
    if rf is not None and rf.type == "json_object":
        return GrammarSpec("json_object"), "response_format"
    if rf is not None and rf.type == "json_schema":
        if rf.json_schema is None or rf.json_schema.json_schema is None:
            raise BadRequestError(
                "response_format of type json_schema needs json_schema.schema.",
                param="response_format.json_schema",
            )
        return _schema(rf.json_schema.json_schema, "response_format.json_schema.schema")
    if so is None:
        return None
    given = [k for k in ("json_", "regex", "choice", "grammar") if getattr(so, k) is not None]
    if len(given) != 1:
        raise BadRequestError(
            "structured_outputs takes exactly one of json, regex, choice, grammar.",
            param="structured_outputs",
        )
    if so.json_ is not None:
        return _schema(so.json_, "structured_outputs.json")
    if so.regex is not None:
        return GrammarSpec("regex", so.regex), "structured_outputs.regex"
    if so.choice is not None:
        if not so.choice or any(not c for c in so.choice):
            raise BadRequestError("choice must be a list of non-empty strings.",
                                  param="structured_outputs.choice")
        return GrammarSpec("choice", json.dumps(so.choice)), "structured_outputs.choice"
    return GrammarSpec("grammar", so.grammar or ""), "structured_outputs.grammar"


def _schema(schema: dict | str, param: str) -> tuple[GrammarSpec, str]:
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except ValueError:
            raise BadRequestError("The JSON schema is not valid JSON.", param=param) from None
    if not isinstance(schema, dict):
        raise BadRequestError("The JSON schema must be an object.", param=param)
    # canonical text: the same schema written differently shares one cache entry
    return GrammarSpec("json_schema", json.dumps(schema, sort_keys=True)), param


async def request_grammar(state: ServerState, req: SamplingFields) -> Grammar | None:
    """The compiled grammar for `req` (None: unconstrained); 400 when it cannot be compiled."""
    asked = grammar_spec(req)
    if asked is None:
        return None
    spec, param = asked
    compile_grammar = getattr(state.engine, "compile_grammar", None)
    if compile_grammar is None:
        raise BadRequestError("This engine does not support structured outputs.", param=param)
    loop = asyncio.get_running_loop()
    load = getattr(state.engine, "load_grammar_compiler", None)
    if load is not None:  # the one-time vocabulary indexing does not count against the deadline
        await loop.run_in_executor(_COMPILERS, load)
    timeout = state.settings.grammar_compile_timeout_s
    work = loop.run_in_executor(_COMPILERS, compile_grammar, spec)
    try:
        return await asyncio.wait_for(work, timeout)
    except TimeoutError:
        raise BadRequestError(
            f"The {param} could not be compiled within {timeout:g} s; simplify it.", param=param
        ) from None
    except GrammarError as exc:
        raise BadRequestError(f"Invalid {param}: {exc}", param=param) from None
