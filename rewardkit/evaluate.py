"""Held-out evaluation: greedy completions scored by a registered reward."""

from __future__ import annotations


def greedy_completions(model, tokenizer, prompts: list, max_new_tokens: int = 16, batch_size: int = 64) -> list[str]:
    """Decode greedily, batched with left padding; returns only the new text of each prompt."""
    import torch  # noqa: PLC0415

    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[str] = []
    for i in range(0, len(prompts), batch_size):
        batch = prompts[i:i + batch_size]
        if not isinstance(batch[0], str):  # conversational
            batch = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in batch]
        enc = tokenizer(batch, return_tensors="pt", padding=True).to(device)
        with torch.no_grad():
            gen = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        out.extend(tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True))
    model.train(was_training)
    return out


def evaluate(model, tokenizer, dataset, reward_fn, max_new_tokens: int = 16, batch_size: int = 64,
             n: int | None = None) -> dict:
    """Mean reward of greedy completions on ``dataset`` (first ``n`` rows); unjudged samples counted apart."""
    if n is not None:
        dataset = dataset.select(range(min(n, len(dataset))))
    prompts = list(dataset["prompt"])
    completions = greedy_completions(model, tokenizer, prompts, max_new_tokens, batch_size)
    columns = {c: list(dataset[c]) for c in dataset.column_names if c not in ("prompt", "completion")}
    if not isinstance(prompts[0], str):
        completions = [[{"role": "assistant", "content": c}] for c in completions]
    scores = reward_fn(prompts=prompts, completions=completions, **columns)
    judged = [s for s in scores if s is not None]
    return {"score": sum(judged) / len(judged) if judged else float("nan"), "n": len(scores),
            "unjudged": len(scores) - len(judged), "examples": list(zip(prompts[:3], completions[:3]))}
