"""Server settings: the only place that reads the environment (`DELTASERVE_*`).

Each field is one `deltaserve serve` flag (`--max-num-seqs` ↔ `max_num_seqs` ↔
`DELTASERVE_MAX_NUM_SEQS`); the CLI builds its parser from these fields, so the field
descriptions are the `--help` text. Precedence: command-line flag > environment > default.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """Everything `deltaserve serve` can be told, typed and documented."""

    model_config = SettingsConfigDict(
        env_prefix="DELTASERVE_", extra="ignore", protected_namespaces=()
    )

    # --- what to serve -------------------------------------------------------------------
    model: str = Field(
        json_schema_extra={"metavar": "DIR|HUB_ID"},
        description="Base model: a Hugging Face model directory (config, safetensors, tokenizer), "
        "or a hub id (org/name, org/name@revision) already in the local Hugging Face cache "
        "(deltaserve never downloads). An existing directory wins.",
    )
    revision: str | None = Field(
        None,
        json_schema_extra={"metavar": "REV"},
        description="Revision of a hub-id --model: a branch, tag or commit sha (default main).",
    )
    hub_cache: Path | None = Field(
        None,
        json_schema_extra={"metavar": "DIR"},
        description="Hugging Face cache in which hub ids are looked up (default: huggingface_hub's: "
        "$HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub). Only read, never "
        "filled: no request goes to the hub, whether HF_HUB_OFFLINE is set or not.",
    )
    served_model_name: str | None = Field(
        None,
        json_schema_extra={"metavar": "NAME"},
        description="The base model's id in the API (default: the model directory's name, or the "
        "hub id).",
    )
    adapter_dir: Path | None = Field(
        None,
        description="Directory of adapters, one subdirectory per adapter; its name is the adapter's "
        "`model` id (PEFT LoRA directories are taken as is).",
    )
    # --- where to listen -----------------------------------------------------------------
    host: str = Field(
        "127.0.0.1",
        json_schema_extra={"metavar": "HOST"},
        description="Address to bind (0.0.0.0 for all interfaces).",
    )
    port: int = Field(8000, ge=0, le=65535, description="TCP port to listen on.")
    redis_url: str | None = Field(
        None,
        json_schema_extra={"metavar": "URL"},
        description="Redis URL of the shared adapter cache (redis://host:port/db); unset = embedded cache.",
    )
    # --- engine --------------------------------------------------------------------------
    engine: Literal["native", "vllm"] = Field("native", description="Engine backend.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Device for the base model (auto: CUDA when available)."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="Weight/activation dtype (auto: bfloat16 on CUDA; on CPU bfloat16 only where "
        "the CPU computes it natively (AVX512-BF16 or AMX-BF16), else float32).",
    )
    quantization: Literal["none", "int8", "int4", "gptq", "awq"] | None = Field(
        None,
        description="Weight-only quantized base (native engine; vLLM's flag name): int8/int4 "
        "quantize a full-precision checkpoint at load, gptq/awq load such checkpoints, none "
        "keeps full precision; unset = what the checkpoint's config.json quantization_config "
        "names (gptq, awq), else none. Adapters apply on top in the serving dtype.",
    )
    max_num_seqs: int = Field(
        64, ge=1, description="Most sequences in one engine step (batch size cap)."
    )
    max_loras: int | None = Field(
        None,
        ge=1,
        description="Explicit cap on distinct adapters in one engine step (unset: as many as "
        "fit the device adapter pool's byte budget, counting each adapter's real ranks).",
    )
    max_gpu_adapters: int | None = Field(
        None, ge=1, description="Deprecated name of --max-loras (used when --max-loras is unset)."
    )
    adapter_pool_bytes: int | None = Field(
        None,
        ge=1,
        description="Byte budget of the device adapter pool (unset: room for --max-loras "
        "adapters of --max-lora-rank when that is set, else 10% of the device's memory).",
    )
    max_cpu_adapters: int = Field(
        64, ge=1, description="Most adapters kept loaded in host memory (LRU beyond that)."
    )
    max_lora_rank: int = Field(64, ge=1, description="Largest LoRA rank accepted.")
    max_mix_members: int = Field(
        8, ge=1, description="Most LoRAs one mix (registered or ad-hoc) may combine."
    )
    max_mix_heads: int = Field(
        64, ge=1, description="Most routing heads one mix may use (MHR heads)."
    )
    max_model_len: int | None = Field(
        None, ge=1, description="Context length (prompt + generated tokens); default: the model's."
    )
    max_num_batched_tokens: int | None = Field(
        None, ge=1, description="Token budget of one engine step (decode tokens first, then "
        "prompt chunks). Default: 512 on CPU, 2048 on CUDA with chunked prefill; without it "
        "max(2048, context length).",
    )
    enable_chunked_prefill: bool = Field(
        True, description="Split prompts into chunks that share steps with running decodes "
        "(decode-first), so streams do not stall while long prompts arrive.",
    )
    enable_prefix_caching: bool = Field(
        True, description="Reuse the KV cache of prompt prefixes computed before (keyed by "
        "token ids, base weights and the adapter's content; see README, Prefix caching).",
    )
    prefix_cache_scope: Literal["global", "tenant"] = Field(
        "global", description="global: base-model rows of all tenants share cached prefixes "
        "(adapter rows are always per tenant); tenant: every tenant has its own.",
    )
    seed: int = Field(0, description="Engine seed for requests that do not set their own.")
    queue_policy: Literal["auto", "fcfs", "vtc"] = Field(
        "auto",
        description="Order in which waiting requests are admitted: fcfs, or vtc (fair across "
        "tenants by virtual token counters, weighted by the key file's tenant weights). "
        "auto: vtc when --api-keys is set, else fcfs.",
    )
    # --- --engine vllm (passed to vLLM's engine arguments; the native engine ignores them) --
    tensor_parallel_size: int = Field(
        1, ge=1, description="vllm: GPUs the base model is split across (tensor parallelism)."
    )
    pipeline_parallel_size: int = Field(
        1, ge=1, description="vllm: pipeline stages the layers are split into (GPUs or nodes)."
    )
    distributed_executor_backend: Literal["mp", "ray", "uni", "external_launcher"] | None = Field(
        None, description="vllm: how workers are run (mp: local processes, ray: multi-node); "
        "unset = vLLM's choice."
    )
    gpu_memory_utilization: float = Field(
        0.9, gt=0, le=1, description="vllm: fraction of the GPU memory vLLM may use (weights + KV "
        "cache)."
    )
    max_cpu_loras: int | None = Field(
        None, ge=1, description="vllm: most LoRAs cached in host memory (default: "
        "--max-cpu-adapters, at least --max-loras)."
    )
    enforce_eager: bool = Field(
        False, description="vllm: run eagerly, without CUDA graphs or compilation."
    )
    vllm_engine_arg: Annotated[list[str], NoDecode] = Field(
        default_factory=list, json_schema_extra={"metavar": "KEY=VALUE"},
        description="vllm: any other vLLM engine argument (repeatable; VALUE is read as JSON, "
        "else as a string), e.g. max_num_batched_tokens=2048; in the environment a JSON object.",
    )
    # --- tenancy -------------------------------------------------------------------------
    api_keys: Path | None = Field(
        None,
        description='JSON file {"keys": [{"key" or "key_sha256", "tenant", "role": "user|admin"}], '
        '"tenants": {"<tenant>": {quotas, "weight"}}}; unset = single-tenant, no authentication. '
        "Reloaded on SIGHUP.",
    )
    adapter_source_root: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="Server-side directories adapters may be registered from (repeatable; "
        f"in the environment a JSON list or paths separated by '{os.pathsep}').",
    )
    allow_hub_adapters: bool = Field(
        False,
        description="Let adapters be registered by hub id (JSON `source`, `lora_path`) from the "
        "Hugging Face cache (--hub-cache); listing that cache in --adapter-source-root does too.",
    )
    # --- adapter store -------------------------------------------------------------------
    data_dir: Path | None = Field(
        None,
        description="Directory for the adapter store's materialised adapters (content-addressed); "
        "unset = a fresh temporary directory.",
    )
    max_adapter_bytes: int = Field(
        256 * 1024 * 1024, ge=1, description="Largest adapter accepted (all its files; larger: 413)."
    )
    max_total_adapter_bytes: int = Field(
        16 * 1024 * 1024 * 1024,
        ge=1,
        description="Most bytes of registered adapters in total (beyond: 413).",
    )
    max_local_content_bytes: int | None = Field(
        None,
        ge=0,
        description="Disk budget of the local adapter content directory: beyond it the least "
        "recently used adapters that can be fetched again (from Redis or their source path) and "
        "that no request uses are evicted. Unset = unlimited.",
    )
    adapter_unregister_timeout_s: float = Field(
        30.0, ge=0, description="How long DELETE waits for in-flight requests using the adapter."
    )
    redis_blob_ttl_s: int = Field(
        7 * 24 * 3600,
        ge=1,
        description="TTL of adapter weight blobs in Redis, refreshed on every fetch "
        "(manifests have none: use maxmemory-policy volatile-lru).",
    )
    # --- limits --------------------------------------------------------------------------
    max_body_bytes: int = Field(
        16 * 1024 * 1024, ge=1, description="Largest request body accepted (larger: 413)."
    )
    max_prompt_tokens: int | None = Field(
        None, ge=1, description="Longest prompt in tokens (default: the context length)."
    )
    max_n: int = Field(
        16, ge=1, description="Largest `n` (samples per prompt) a request may ask for."
    )
    max_tokens_limit: int | None = Field(
        None, ge=1, description="Largest `max_tokens` a request may ask for; also caps the default."
    )
    grammar_compile_timeout_s: float = Field(
        10.0, gt=0, description="Longest a structured-output grammar (JSON schema, regex, "
        "EBNF) may take to compile; slower ones are refused with 400."
    )
    max_waiting: int = Field(
        1024, ge=1, description="Longest engine waiting queue; requests beyond it get 429."
    )
    drain_timeout_s: float = Field(
        30.0, ge=0, description="On SIGTERM, how long in-flight requests may run before being cut."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Log level."
    )

    # --- security: request validation and sampling caps (issue 31, A1/A5) -----------------
    # --- security: admission, queues, tokenization, grammars, streams (issue 31, A4-A8) ---
    # --- security: adapter files, patterns, paths, mixes (issue 31, C/D) -------------------
    # --- security: Redis as untrusted input (issue 31, C12-C13) ---------------------------
    # --- security: HTTP edge (issue 31, C14-C16) ------------------------------------------

    @field_validator("adapter_source_root", mode="before")
    @classmethod
    def _split_roots(cls, value: Any) -> Any:
        """Accept a JSON list or an os.pathsep-separated string (from the environment)."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [p for p in text.split(os.pathsep) if p]
        return value

    @field_validator("vllm_engine_arg", mode="before")
    @classmethod
    def _engine_args(cls, value: Any) -> Any:
        """From the environment: a JSON object {"key": value} or one KEY=VALUE string."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("{"):
                return [f"{k}={json.dumps(v)}" for k, v in json.loads(text).items()]
            return [text] if text else []
        return value

    @property
    def base_model_id(self) -> str:
        """The base model's id in the API: --served-model-name, else the model directory's name
        (for a hub-id --model, the app's settings carry the hub id: with_model_dir)."""
        if self.served_model_name:
            return self.served_model_name
        return Path(self.model).resolve().name or self.model


class DemoSettings(BaseSettings):
    """`deltaserve demo`: build the demo base model and adapters."""

    model_config = SettingsConfigDict(env_prefix="DELTASERVE_", extra="ignore")

    out: Path = Field(description="Directory to write the demo into (base/ and adapters/).")


class CompressSettings(BaseSettings):
    """`deltaserve compress`: a full fine-tune → a pruned `sparse_delta` adapter."""

    model_config = SettingsConfigDict(env_prefix="DELTASERVE_", extra="ignore")

    base: Path = Field(description="The base model: an HF model directory (safetensors).")
    finetuned: Path = Field(
        description="The full fine-tune of that base: an HF model directory of the same shapes."
    )
    out: Path = Field(description="Directory to write the sparse_delta adapter into.")
    method: Literal["dare", "darex-q", "magnitude"] = Field(
        description="dare: random keep-mask, rescale 1/density; darex-q: the same mask, rescale "
        "1/q (q chosen on calibration text unless --q); magnitude: keep the largest |delta|."
    )
    density: float = Field(
        gt=0, le=1, description="Fraction of each delta matrix kept (1 - pruning rate), in (0, 1]."
    )
    seed: int = Field(0, description="Seed of the random keep-mask (same seed, same output).")
    calibration: Path | None = Field(
        None, description="darex-q: text file, one calibration sample per line (default: "
        "a built-in text)."
    )
    q: float | None = Field(
        None, gt=0, le=1, description="darex-q: use this q (density < q <= 1) instead of "
        "choosing it."
    )
    per_layer_q: bool = Field(
        False, description="darex-q: one q per decoder layer (analytic least-squares fit of "
        "each layer's outputs on the calibration text) instead of one global q."
    )
    base_model_id: str | None = Field(
        None, description="Base model id written into the adapter (default: the base "
        "directory's name, the id `deltaserve serve --model DIR` uses)."
    )


class MixFitSettings(BaseSettings):
    """`deltaserve mix fit`: learn a mix's routing (MHR-z) from prompt/completion examples."""

    model_config = SettingsConfigDict(env_prefix="DELTASERVE_", extra="ignore", protected_namespaces=())

    model: str = Field(
        json_schema_extra={"metavar": "DIR"},
        description="Base model: a Hugging Face model directory (config, safetensors, tokenizer).",
    )
    adapter_dir: Path = Field(
        description="Directory holding the inventory's PEFT LoRAs, one subdirectory per name."
    )
    inventory: str = Field(
        json_schema_extra={"metavar": "A,B,C"},
        description="Comma-separated inventory: LoRAs of equal rank, alpha and target modules.",
    )
    heads: int = Field(1, ge=1, description="Routing heads (1 = Polytropon).")
    data: Path = Field(description='JSON lines of {"prompt": ..., "completion": ...} examples.')
    out: Path = Field(description="Directory to write the fitted `mix` adapter into.")
    steps: int = Field(100, ge=1, description="Optimisation steps (full batch).")
    lr: float = Field(0.1, gt=0, description="Adam learning rate of the routing logits.")
    seed: int = Field(0, description="Torch seed.")
