"""Embedded models: tiny causal LMs and a character tokenizer built locally, no hub needed.

Built deterministically (fixed seed, fixed vocabulary) and cached under ``$REWARDKIT_CACHE/models``, so any
recipe can say ``model: {name: tiny-llama}`` offline. They exist for the quick start, tests and CI.
"""

from __future__ import annotations

import json
import string

SPECIAL = ["<pad>", "<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
CHARS = ["\n"] + list(string.printable[:95])  # digits, letters, punctuation, space
# Role tokens make the chat template one token per role; the generation prompt ends in <|assistant|>.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}</s>{% else %}<|end|>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

# The tool-calling variant (models named ``*-tools``): two more special tokens, ``<|tool|>`` (the tool role) and
# ``<|call|>`` (opens a call), appended after SPECIAL so every other token keeps its id. A call is written
# ``<|call|>name{a:12,b:"x"}<|end|>`` (bare keys, JSON values: short for a character-level model), an assistant turn
# still ends in </s>, a tool result is ``<|tool|>text<|end|>``. Prefix-preserving (TRL's multi-turn loop needs it).
TOOL_SPECIAL = ["<|tool|>", "<|call|>"]
# Assistant turns are wrapped in {% generation %} so SFT can train on them alone (assistant_only_loss): never on
# the tool results between them.
TOOL_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>"
    "{% if m['role'] == 'assistant' %}{% generation %}"
    "{% if m['content'] is string %}{{ m['content'] }}{% endif %}"
    "{% if m['tool_calls'] is defined and m['tool_calls'] %}{% for c in m['tool_calls'] %}"
    "{% set f = c['function'] if c['function'] is defined else c %}<|call|>{{ f['name'] }}"
    "{% if f['arguments'] is mapping %}{{ '{' }}"
    "{% for k, v in f['arguments'].items() %}{% if v is not none %}{{ k }}:{{ v | tojson }}"
    "{% if not loop.last %},{% endif %}{% endif %}{% endfor %}{{ '}' }}"
    "{% else %}{{ f['arguments'] }}{% endif %}<|end|>{% endfor %}{% endif %}</s>{% endgeneration %}"
    "{% else %}{% if m['content'] is string %}{{ m['content'] }}{% endif %}<|end|>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
# transformers' response parser for that format (tokenizer.response_template, saved with the tokenizer): what TRL's
# tool loop calls to find the calls in a completion. The keys are quoted before the JSON parse (unquoted_keys).
TOOL_RESPONSE_TEMPLATE = {
    "defaults": {"role": "assistant"},
    "start_anchor": "<|assistant|>",
    "fields": {
        "tool_calls": {
            "open_pattern": r"<\|call\|>(?P<name>[A-Za-z_][A-Za-z0-9_]*)",
            "close_pattern": r"<\|end\|>",
            "repeats": True,
            "content": "json",
            "content_args": {"unquoted_keys": True},
            "transform": {"type": "function", "function": {"name": "{name}", "arguments": "{content}"}},
        },
        "content": {"close_pattern": r"</s>\s*", "content": "text"},
    },
}

# name -> (architecture, config overrides). Sizes were calibrated on the arithmetic quick start.
SPECS = {
    "tiny-llama": ("llama", dict(hidden_size=128, intermediate_size=384, num_hidden_layers=3,
                                 num_attention_heads=4, num_key_value_heads=4)),
    "tiny-qwen2": ("qwen2", dict(hidden_size=128, intermediate_size=384, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2)),
}
SPECS["tiny-llama-tools"] = SPECS["tiny-llama"]  # same network, the tool-calling tokenizer (TOOL_SPECIAL)


def build_tokenizer(tools: bool = False):
    """A character-level ``PreTrainedTokenizerFast`` with role tokens and a chat template; with ``tools``, the
    tool-calling tokens, chat template and response parser above."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL + CHARS + (TOOL_SPECIAL if tools else []))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>",
        additional_special_tokens=SPECIAL[4:] + (TOOL_SPECIAL if tools else []), padding_side="left",
        model_max_length=512,
    )
    fast.chat_template = TOOL_CHAT_TEMPLATE if tools else CHAT_TEMPLATE
    if tools:
        fast.response_template = TOOL_RESPONSE_TEMPLATE
    return fast


def build(name: str, path: str) -> None:
    """Write model ``name`` (a key of SPECS) and its tokenizer into ``path``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    arch, overrides = SPECS[name]
    tokenizer = build_tokenizer(tools=name.endswith("-tools"))
    config = AutoConfig.for_model(
        arch, vocab_size=len(tokenizer), max_position_embeddings=512, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, **overrides,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    with open(f"{path}/rewardkit_embedded.json", "w") as f:
        json.dump({"name": name, "arch": arch, **overrides}, f)


def tiny_llama(path: str) -> None:
    build("tiny-llama", path)


def tiny_qwen2(path: str) -> None:
    build("tiny-qwen2", path)


def tiny_llama_tools(path: str) -> None:
    build("tiny-llama-tools", path)
