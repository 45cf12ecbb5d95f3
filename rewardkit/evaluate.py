"""Held-out evaluation: greedy (and optionally sampled) completions scored by a registered reward."""

from __future__ import annotations


def generate(model, tokenizer, prompts: list, max_new_tokens: int = 16, batch_size: int = 64,
             temperature: float | None = None) -> list[str]:
    """Decode greedily (or sample at ``temperature``), batched with left padding; only the new text."""
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
            sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0} \
                if temperature else {"do_sample": False}
            gen = model.generate(**enc, **sampling, max_new_tokens=max_new_tokens,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        out.extend(tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True))
    model.train(was_training)
    return out


def _score(reward_fn, prompts, completions, columns) -> tuple[float, int]:
    if not isinstance(prompts[0], str):
        completions = [[{"role": "assistant", "content": c}] for c in completions]
    scores = reward_fn(prompts=prompts, completions=completions, **columns)
    judged = [s for s in scores if s is not None]
    return (sum(judged) / len(judged) if judged else float("nan")), len(scores) - len(judged)


def evaluate(model, tokenizer, dataset, reward_fn, max_new_tokens: int = 16, batch_size: int = 64,
             n: int | None = None, samples: int = 0, temperature: float = 1.0) -> dict:
    """Mean reward of greedy completions on ``dataset`` (first ``n`` rows); unjudged samples counted apart.

    With ``samples=k`` also the mean reward of k sampled completions per prompt at ``temperature``: the
    accuracy of the stochastic policy RL trains, which moves before the greedy answer does.
    """
    if n is not None:
        dataset = dataset.select(range(min(n, len(dataset))))
    prompts = list(dataset["prompt"])
    columns = {c: list(dataset[c]) for c in dataset.column_names if c not in ("prompt", "completion")}
    completions = generate(model, tokenizer, prompts, max_new_tokens, batch_size)
    score, unjudged = _score(reward_fn, prompts, completions, columns)
    result = {"score": score, "n": len(prompts), "unjudged": unjudged,
              "examples": list(zip(prompts[:3], completions[:3]))}
    if samples:
        rep = [p for p in prompts for _ in range(samples)]
        rep_cols = {c: [v for v in vals for _ in range(samples)] for c, vals in columns.items()}
        sampled = generate(model, tokenizer, rep, max_new_tokens, batch_size, temperature)
        result["sampled_score"], result["sampled_unjudged"] = _score(reward_fn, rep, sampled, rep_cols)
        result["samples"], result["temperature"] = samples, temperature
    return result
