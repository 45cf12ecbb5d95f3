"""The smoke run's stand-in for a hub model: the same architecture class at tiny width, with a byte-level BPE
tokenizer trained on the task's own text and a chat template in the model family's style, warmed up on the
recipe's training rows so that its completions are answer-shaped and the rewards have something to score.

Built locally (no hub), deterministically, and cached under ``$REWARDKIT_CACHE/smoke`` by content.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass

from rewardkit.completions import completion_text
from rewardkit.errors import RecipeError
from rewardkit.models import build_once

BUILD_VERSION = "v1"  # bump when anything below changes what is built

# Chat templates in the style of each family's instruct models (written for rewardkit, not copied).
CHATML = (
    "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\n' + default_system + '<|im_end|>\\n' }}"
    "{% endif %}{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LLAMA3 = (
    "{{ '<|begin_of_text|>' }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n'"
    " + m['content'] + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)


@dataclass(frozen=True)
class Family:
    model_type: str  # transformers config model_type: the architecture class the hub model has
    patterns: tuple[str, ...]  # lowercase substrings of a hub id that name the family
    template: str
    eos: str
    pad: str
    specials: tuple[str, ...]
    default_system: str = ""


FAMILIES = (
    Family("qwen3", ("qwen3",), CHATML, "<|im_end|>", "<|endoftext|>", ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
           "You are a helpful assistant."),
    Family("qwen2", ("qwen2", "qwen1.5", "qwq"), CHATML, "<|im_end|>", "<|endoftext|>",
           ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
           "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."),
    Family("llama", ("llama", "smollm"), LLAMA3, "<|eot_id|>", "<|finetune_right_pad_id|>",
           ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
            "<|finetune_right_pad_id|>")),
)
TINY = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
VOCAB_SIZE = 1024
WARMUP_STEPS, WARMUP_SECONDS, WARMUP_TARGET_LOSS = 400, 90.0, 0.05


def family_of(name: str, where: str = "model.name") -> Family:
    """The family a hub id belongs to, by name (the hub cannot be asked)."""
    low = name.lower()
    for fam in FAMILIES:
        if any(p in low for p in fam.patterns):
            return fam
    known = ", ".join(f"{f.model_type} ({'/'.join(f.patterns)})" for f in FAMILIES)
    raise RecipeError(f"{where}: --smoke cannot tell the architecture of hub model '{name}' from its name; "
                      f"it builds stand-ins for: {known}. Run the recipe without --smoke, or point {where} at a "
                      f"local model directory")


def _texts(rows: list[dict]) -> list[str]:
    """Every string in the rows (message contents included): the corpus the tokenizer is trained on."""
    out = []
    for row in rows:
        for value in row.values():
            if isinstance(value, str):
                out.append(value)
            elif isinstance(value, list):
                out.extend(completion_text([m]) for m in value if isinstance(m, dict))
    return out


def build_tokenizer(fam: Family, texts: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=list(fam.specials), min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts + [fam.default_system, "system user assistant"], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=fam.eos, pad_token=fam.pad,
                                   additional_special_tokens=[s for s in fam.specials if s not in (fam.eos, fam.pad)],
                                   model_max_length=4096)
    fast.chat_template = fam.template.replace("default_system", json.dumps(fam.default_system))
    return fast


def warmup_pairs(rows: list[dict], target_column: str | None) -> list[tuple]:
    if not target_column:
        return []
    return [(r["prompt"], completion_text(r[target_column]) if not isinstance(r[target_column], str)
             else r[target_column]) for r in rows if r.get(target_column) is not None]


def _warm_up(model, tokenizer, pairs: list[tuple], log) -> dict:
    """Fit the tiny model to the training rows' targets (memorisation), so sampled completions look like answers."""
    import torch

    seqs = []
    for prompt, target in pairs:
        head = prompt if isinstance(prompt, str) else tokenizer.apply_chat_template(
            prompt, tokenize=False, add_generation_prompt=True)
        p = tokenizer(head, add_special_tokens=False)["input_ids"]
        t = tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        seqs.append((p, t))
    width = max(len(p) + len(t) for p, t in seqs)
    ids = torch.full((len(seqs), width), tokenizer.pad_token_id)
    labels = torch.full((len(seqs), width), -100)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, (p, t) in enumerate(seqs):
        ids[i, :len(p) + len(t)] = torch.tensor(p + t)
        labels[i, len(p):len(p) + len(t)] = torch.tensor(t)
        mask[i, :len(p) + len(t)] = 1
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    start, loss, step = time.time(), float("nan"), 0
    model.train()
    for step in range(1, WARMUP_STEPS + 1):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss = loss.item()
        if loss < WARMUP_TARGET_LOSS or time.time() - start > WARMUP_SECONDS:
            break
    log(f"smoke stand-in warmed up on {len(seqs)} training rows: {step} steps, loss {loss:.3f} nats/token, "
        f"{time.time() - start:.0f}s")
    return {"rows": len(seqs), "steps": step, "loss": round(loss, 4)}


def build(name: str, fam: Family, rows: list[dict], target_column: str | None, cache: str, log) -> str:
    """The stand-in's directory for hub model ``name`` of family ``fam`` and these training rows (built on first
    use)."""
    key = hashlib.sha256(json.dumps([BUILD_VERSION, fam.model_type, TINY, VOCAB_SIZE, target_column, rows],
                                    sort_keys=True, default=str).encode()).hexdigest()[:16]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name)
    path = os.path.join(cache, "smoke", f"{slug}-{key}")
    return build_once(path, lambda tmp: _write(name, fam, rows, target_column, tmp, log))


def _write(name: str, fam: Family, rows: list[dict], target_column: str | None, out: str, log) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = build_tokenizer(fam, _texts(rows))
    ids = tokenizer.convert_tokens_to_ids
    config = AutoConfig.for_model(fam.model_type, vocab_size=len(tokenizer), max_position_embeddings=4096,
                                  tie_word_embeddings=True, eos_token_id=ids(fam.eos), pad_token_id=ids(fam.pad),
                                  bos_token_id=None, **TINY)
    config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    # Next to a config of this architecture, AutoTokenizer loads the family's own tokenizer class (Qwen2's splits
    # digits one by one), which is what the trainers will use: warm up with that one.
    tokenizer = AutoTokenizer.from_pretrained(out)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        warm = _warm_up(model, tokenizer, warmup_pairs(rows, target_column), log) if target_column else None
    model.generation_config.pad_token_id = ids(fam.pad)
    model.generation_config.eos_token_id = ids(fam.eos)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    with open(os.path.join(out, "rewardkit_smoke.json"), "w") as f:
        json.dump({"stands_in_for": name, "architecture": type(model).__name__, "model_type": fam.model_type, **TINY,
                   "vocab_size": len(tokenizer), "tokenizer": type(tokenizer).__name__,
                   "target_column": target_column, "warm_up": warm}, f)
