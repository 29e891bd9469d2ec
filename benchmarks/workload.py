"""Workload W's assets, built deterministically and cached under `--out` (default bench-out/).

    <out>/assets-<name>-<hash>/
        tokenizer/            byte-level BPE (vocab 4096) trained on stdlib docstrings
        base/                 random-init causal LM of spec.arch (Llama, Qwen3, Gemma 3), bf16
        adapters/lora-NN/     PEFT LoRA (r=16, alpha=32, q,k,v,o,gate,up,down), B scaled by 0.1
        prompts-<N>x<L>.json  N prompts of exactly L token ids, cut from held-out text
        manifest.json         the spec the directory was built from; written last

The hash covers everything that shapes the weights, so changing a dimension builds a new
directory instead of silently reusing a stale one; prompts are cheap and cached per (N, L).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from benchmarks import corpus

TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]  # ids 0..3 (trainer puts them first)
UNK_ID, BOS_ID, EOS_ID, PAD_ID = 0, 1, 2, 3
MAX_POSITIONS = 2048  # >= prompt + generated tokens of any workload we run (R: up to 1,152)
ARCHS = ("llama", "qwen3", "gemma3")
GEMMA3_SLIDING_WINDOW = 512  # shorter than R's longest sequences, so the local layers bite


@dataclass(frozen=True)
class ModelSpec:
    """Everything that determines the on-disk weights (base + adapters) and the tokenizer."""

    name: str = "w"
    hidden_size: int = 768
    intermediate_size: int = 2048
    num_layers: int = 12
    num_heads: int = 12
    num_kv_heads: int = 4
    vocab_size: int = 4096
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_b_scale: float = 0.1
    num_adapters: int = 32
    max_positions: int = MAX_POSITIONS
    seed: int = 0
    arch: str = "llama"
    """The base's architecture, one of ARCHS."""

    def key(self) -> str:
        fields = dataclasses.asdict(self)
        if self.arch == "llama":  # keys from before `arch` existed stay valid (built assets)
            del fields["arch"]
        blob = json.dumps(fields, sort_keys=True).encode()
        return f"{self.name}-{hashlib.sha256(blob).hexdigest()[:10]}"


# Workload W as specified in the issue, and a smoke-size model that builds in seconds (head_dim
# 32 in both: vLLM's CPU attention takes no smaller head).
W_SPEC = ModelSpec()
SMALL_SPEC = ModelSpec(
    name="small", hidden_size=64, intermediate_size=128, num_layers=2, num_heads=2,
    num_kv_heads=1, num_adapters=4,
)


@dataclass(frozen=True)
class Assets:
    """Paths of a built workload."""

    root: Path
    spec: ModelSpec

    @property
    def tokenizer_dir(self) -> Path:
        return self.root / "tokenizer"

    @property
    def base_dir(self) -> Path:
        return self.root / "base"

    def adapter_name(self, i: int) -> str:
        return f"lora-{i:02d}"

    def adapter_dir(self, i: int) -> Path:
        return self.root / "adapters" / self.adapter_name(i)

    def prompts(self, num_requests: int, prompt_len: int) -> list[list[int]]:
        """`num_requests` lists of exactly `prompt_len` token ids (built once, then cached)."""
        path = self.root / f"prompts-{num_requests}x{prompt_len}.json"
        if not path.exists():
            ids = _cut_prompts(self.tokenizer_dir, num_requests, prompt_len)
            _atomic_write(path, json.dumps(ids))
        return json.loads(path.read_text())


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def build_tokenizer(out_dir: Path, vocab_size: int, train_text: list[str]) -> None:
    """Byte-level BPE (GPT-2 style: every byte is in the alphabet, so no text is ever <unk>)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(train_text, trainer)
    assert tok.token_to_id("</s>") == EOS_ID and tok.token_to_id("<s>") == BOS_ID
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        pad_token="<pad>",
    )
    fast.save_pretrained(str(out_dir))


def base_config(spec: ModelSpec):
    """The transformers config of `spec`'s base: its arch with the spec's sizes (head_dim =
    hidden / heads in every arch: Qwen3's and Gemma 3's own defaults are 128 and 256)."""
    from transformers import Gemma3TextConfig, LlamaConfig, Qwen3Config

    head_dim = spec.hidden_size // spec.num_heads
    common = dict(
        vocab_size=spec.vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        head_dim=head_dim,
        max_position_embeddings=spec.max_positions,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
    )
    if spec.arch == "llama":
        return LlamaConfig(**common, tie_word_embeddings=False)
    if spec.arch == "qwen3":
        return Qwen3Config(**common, tie_word_embeddings=False)
    if spec.arch == "gemma3":
        # Gemma's tied embeddings and its default local/global layer pattern.
        return Gemma3TextConfig(**common, sliding_window=GEMMA3_SLIDING_WINDOW,
                                query_pre_attn_scalar=head_dim, tie_word_embeddings=True)
    raise ValueError(f"unknown arch {spec.arch!r}; choose from {', '.join(ARCHS)}")


def build_base(out_dir: Path, spec: ModelSpec):
    """Random-init base of `spec.arch` (fixed seed), saved as bf16 safetensors; returns the
    bf16 model."""
    import torch
    from transformers import AutoModelForCausalLM

    config = base_config(spec)
    torch.manual_seed(spec.seed)
    # Init in fp32 (what HF does by default), then cast: same numbers on every machine.
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model = model.to(torch.bfloat16).eval()
    model.save_pretrained(str(out_dir), safe_serialization=True)
    return model


def build_adapters(root: Path, base_model, spec: ModelSpec) -> None:
    """`spec.num_adapters` PEFT LoRAs with non-zero B (init_lora_weights=False, B *= b_scale).

    With init_lora_weights=False PEFT keeps nn.Linear's default (Kaiming-uniform) init for both
    A [r, d_in] and B [d_out, r], so B ~ U(-1/sqrt(r), 1/sqrt(r)) before scaling. PEFT upcasts
    adapter weights of a bf16 base to fp32 (autocast_adapter_dtype), so they are saved in fp32.
    """
    import warnings

    import torch
    from peft import LoraConfig, get_peft_model

    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    model = base_model
    for i in tqdm(range(spec.num_adapters), desc="adapters", unit="adapter"):
        cfg = LoraConfig(
            r=spec.lora_rank,
            lora_alpha=spec.lora_alpha,
            target_modules=TARGET_MODULES,
            lora_dropout=0.0,
            init_lora_weights=False,
            task_type="CAUSAL_LM",
        )
        torch.manual_seed(spec.seed + 1 + i)  # adapter i is the same whatever num_adapters is
        peft_model = get_peft_model(model, cfg)
        with torch.no_grad():
            for name, param in peft_model.named_parameters():
                if "lora_B" in name:
                    param.mul_(spec.lora_b_scale)
        out_dir = root / "adapters" / f"lora-{i:02d}"
        peft_model.save_pretrained(str(out_dir))
        # PEFT writes target_modules from a set (hash order): sort it so the file is stable.
        cfg_path = out_dir / "adapter_config.json"
        cfg_json = json.loads(cfg_path.read_text())
        cfg_json["target_modules"] = sorted(cfg_json["target_modules"])
        cfg_path.write_text(json.dumps(cfg_json, indent=2, sort_keys=True))
        model = peft_model.unload()  # strip the LoRA layers: the base is reused for the next


def _cut_prompts(tokenizer_dir: Path, num_requests: int, prompt_len: int) -> list[list[int]]:
    """Windows of exactly `prompt_len` tokens, evenly spread over the held-out paragraphs."""
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(str(tokenizer_dir))
    _, held = corpus.split(corpus.paragraphs())
    stream: list[int] = tok("\n\n".join(held), add_special_tokens=False)["input_ids"]
    if len(stream) < num_requests * prompt_len:
        raise ValueError(
            f"held-out text has {len(stream)} tokens; {num_requests}x{prompt_len} needs more"
        )
    stride = len(stream) // num_requests  # >= prompt_len: windows never overlap
    return [stream[i * stride : i * stride + prompt_len] for i in range(num_requests)]


def build(out: str | Path, spec: ModelSpec = W_SPEC) -> Assets:
    """Build (or reuse) the assets for `spec` under `out`; returns their paths."""
    root = Path(out) / f"assets-{spec.key()}"
    assets = Assets(root=root, spec=spec)
    manifest = root / "manifest.json"
    if manifest.exists():
        return assets
    root.mkdir(parents=True, exist_ok=True)
    with tqdm(total=4, desc=f"building workload assets ({spec.name})", unit="step") as bar:
        bar.set_postfix_str("corpus")
        train, _ = corpus.split(corpus.paragraphs())
        bar.update()
        bar.set_postfix_str("tokenizer")
        build_tokenizer(assets.tokenizer_dir, spec.vocab_size, train)
        bar.update()
        bar.set_postfix_str("base model")
        model = build_base(assets.base_dir, spec)
        # A served model directory carries its tokenizer.
        from transformers import PreTrainedTokenizerFast

        PreTrainedTokenizerFast.from_pretrained(str(assets.tokenizer_dir)).save_pretrained(
            str(assets.base_dir)
        )
        bar.update()
        bar.set_postfix_str("adapters")
        build_adapters(root, model, spec)
        bar.update()
    _atomic_write(manifest, json.dumps(dataclasses.asdict(spec), indent=2))
    return assets
