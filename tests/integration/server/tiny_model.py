"""A microscopic random Llama with a byte-level tokenizer and PEFT LoRA adapters, for tests.

Everything is built locally (no hub access) in a few seconds: 259 tokens (<s>, </s>, <unk> and
the 256 byte-level symbols), 2 layers, hidden size 64. The adapters use
init_lora_weights=False so that they really change the model's outputs.
"""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
CONTEXT = 1024


def build_tokenizer(chat_template: str | None = CHAT_TEMPLATE):
    """A transformers fast tokenizer over raw UTF-8 bytes; BOS is added to text prompts."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<s>": 0, "</s>": 1, "<unk>": 2}
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[symbol] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 0)]
    )
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    hf.chat_template = chat_template
    return hf


def build_model_dir(out: Path, seed: int = 0) -> Path:
    """Save a random tiny LlamaForCausalLM + tokenizer to `out`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=CONTEXT,
        bos_token_id=0,
        eos_token_id=1,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32)
    # Sharper logits than the default init, so greedy decoding is stable across batch shapes;
    # tokens other than printable ASCII (and EOS) get zero weights, so greedy text is readable.
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
        printable = {
            tokenizer.convert_tokens_to_ids(tokenizer.tokenize(chr(c))[0]) for c in range(32, 127)
        }
        for token_id in range(len(tokenizer)):
            if token_id not in printable and token_id != 1:
                model.lm_head.weight[token_id].zero_()
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def build_lora(base_dir: Path, out: Path, rank: int, seed: int) -> Path:
    """A PEFT LoRA adapter for the model in `base_dir` with random (non-zero) A and B."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM.from_pretrained(base_dir)
    config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        target_modules=["q_proj", "v_proj", "o_proj", "down_proj"],
        init_lora_weights=False,
    )
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.mul_(4.0)
    peft_model.save_pretrained(out, safe_serialization=True)
    return out


def build_all(root: Path, adapters: dict[str, int] | None = None) -> tuple[Path, Path]:
    """Base model in root/base, adapters (name → rank) in root/adapters/<name>."""
    base = build_model_dir(root / "base")
    adapter_dir = root / "adapters"
    for i, (name, rank) in enumerate((adapters or {"alpha": 4, "beta": 8, "gamma": 16}).items()):
        build_lora(base, adapter_dir / name, rank=rank, seed=100 + i)
    return base, adapter_dir
