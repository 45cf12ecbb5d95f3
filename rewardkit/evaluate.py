"""Held-out evaluation: greedy (and optionally sampled) completions scored by a registered reward; from the
sampled ones pass@k (Chen et al. 2021's unbiased estimator) and maj@k (majority vote over extracted answers),
each with its standard error over problems."""

from __future__ import annotations

import math
from collections import Counter

from rewardkit.hookspecs import REWARD_ANSWER_EXTRACTOR as EXTRACTOR  # documented in register_rewards
from rewardkit.recipe_schema import Eval

def generate(model, tokenizer, prompts: list, max_new_tokens: int = Eval.max_new_tokens, batch_size: int = Eval.batch_size,
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


def _scores(reward_fn, prompts, completions, columns) -> list[float | None]:
    if not isinstance(prompts[0], str):
        completions = [[{"role": "assistant", "content": c}] for c in completions]
    return list(reward_fn(prompts=prompts, completions=completions, **columns))


def _mean(scores) -> tuple[float, int]:
    """The mean of the judged scores, and how many were not judged (``None``)."""
    judged = [s for s in scores if s is not None]
    return (sum(judged) / len(judged) if judged else float("nan")), len(scores) - len(judged)


# --------------------------------------------------------------------------- pass@k and maj@k
def pass_at_k(n: int, c: int, k: int) -> float:
    """Chen et al. 2021 (arXiv:2107.03374), eq. 1: the chance that k of n samples drawn without replacement hold at
    least one of the c correct ones, 1 - C(n-c, k) / C(n, k). Unbiased for pass@k, unlike 1 - (1 - c/n)^k."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    return 1.0 if n - c < k else 1.0 - math.comb(n - c, k) / math.comb(n, k)


def majority(answers: list[str | None]) -> int | None:
    """Index of the vote's winner: the earliest completion giving the most frequent answer (``None``: no answer,
    no vote). Tie rule: among answers given equally often, the one sampled first wins. None when nobody answered."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    top = max(counts.values())
    return next(i for i, a in enumerate(answers) if a is not None and counts[a] == top)


def maj_at_k(answers: list[str | None], scores: list[float | None], k: int, correct_at: float) -> float | None:
    """One problem's maj@k: the mean over its ⌊n/k⌋ disjoint blocks of k consecutive samples of whether the block's
    voted answer is correct. The voted answer is judged as the reward judged the completions giving it (the
    earliest judged one; an extractor's equal answers earn equal scores); a block where nobody answered is wrong;
    a block whose winner no completion of it had judged is left out. None when every block is left out."""
    votes = []
    for start in range(0, len(answers) - k + 1, k):
        block, marks = answers[start:start + k], scores[start:start + k]
        win = majority(block)
        if win is None:
            votes.append(0.0)
            continue
        verdict = next((s for a, s in zip(block, marks) if a == block[win] and s is not None), None)
        if verdict is not None:
            votes.append(float(verdict >= correct_at))
    return sum(votes) / len(votes) if votes else None


def interval(values: list[float | None], total: int) -> dict:
    """Mean over problems, its standard error (sample std / sqrt(problems), a normal approximation: the 95%
    interval is about ±1.96 se), how many problems counted and how many were left out (too few judged samples)."""
    vals = [v for v in values if v is not None]
    p = len(vals)
    mean = sum(vals) / p if p else None
    se = math.sqrt(sum((v - mean) ** 2 for v in vals) / (p - 1) / p) if p > 1 else None
    return {"value": mean, "se": se, "problems": p, "left_out": total - p}


def default_ks(samples: int) -> dict:
    """pass@1 and pass@samples, maj@samples (maj@1 would be sampled accuracy again); none without samples."""
    return {"pass_k": sorted({1, samples}) if samples else [], "maj_k": [samples] if samples >= 2 else []}


def _threshold(reward_fn, correct_at):
    """``(correct_at, None)``, or ``(None, why not)`` where the reward declares no score_range to default it from."""
    if correct_at is not None:
        return correct_at, None
    score_range = getattr(getattr(reward_fn, "fn", reward_fn), "score_range", None)
    if score_range:
        return score_range[1], None
    return None, f"reward '{_name(reward_fn)}' declares no score_range; set eval.correct_at"


def _name(reward_fn) -> str:
    return getattr(reward_fn, "__name__", "eval")


def _answers(reward_fn, completions: list[str]) -> list[str | None] | None:
    from rewardkit.errors import RewardError  # noqa: PLC0415

    extract = getattr(getattr(reward_fn, "fn", reward_fn), EXTRACTOR, None)
    if extract is None:
        return None
    out = []
    for i, c in enumerate(completions):
        try:
            out.append(extract(c))
        except Exception as exc:  # noqa: BLE001 - a failing extractor is a broken reward, never "no answer"
            raise RewardError(f"reward '{_name(reward_fn)}' from {getattr(reward_fn, 'provider', 'its plugin')}: "
                              f"{EXTRACTOR} raised on sampled completion {i} ({c!r:.80}): "
                              f"{type(exc).__name__}: {exc}") from exc
    return out


def k_metrics(reward_fn, completions: list[str], scores: list[float | None], samples: int,
              pass_k: list[int], maj_k: list[int], correct_at: float | None = None) -> dict:
    """pass@k and maj@k of ``samples`` consecutive completions per problem (``scores`` aligned with them).

    "Correct" is a score of at least ``correct_at`` (default: the top of the reward's declared ``score_range``, so
    for ``exact_match`` only an exact answer, never partial credit). pass@k counts a problem's judged samples only
    (n = its judged samples; a problem with fewer than k is left out). What cannot be computed is ``None`` with
    the reason in ``<key>_unavailable``, never a 0."""
    out: dict = {}
    threshold, why = _threshold(reward_fn, correct_at)
    out["correct_at"] = threshold
    problems = [range(i, i + samples) for i in range(0, len(scores), samples)]
    if pass_k:
        if threshold is None:
            out["pass_at_k"], out["pass_at_k_unavailable"] = None, why
        else:
            per = {}
            for k in pass_k:
                vals = []
                for idx in problems:
                    judged = [scores[i] for i in idx if scores[i] is not None]
                    vals.append(pass_at_k(len(judged), sum(s >= threshold for s in judged), k)
                                if len(judged) >= k else None)
                per[str(k)] = interval(vals, len(problems))
            out["pass_at_k"] = per
    if maj_k:
        answers = _answers(reward_fn, completions) if threshold is not None else None
        if answers is None:
            out["maj_at_k"] = None
            out["maj_at_k_unavailable"] = why or f"reward '{_name(reward_fn)}' declares no answer extractor"
        else:
            out["maj_at_k"] = {str(k): interval([maj_at_k([answers[i] for i in idx], [scores[i] for i in idx], k,
                                                          threshold) for idx in problems], len(problems))
                               for k in maj_k}
    return out


def evaluate(model, tokenizer, dataset, reward_fn, max_new_tokens: int = Eval.max_new_tokens,
             batch_size: int = Eval.batch_size, n: int | None = None, samples: int = Eval.samples,
             temperature: float = Eval.temperature, pass_k: list[int] | None = None,
             maj_k: list[int] | None = None, correct_at: float | None = None, generate_fn=None) -> dict:
    """Mean reward of greedy completions on ``dataset`` (first ``n`` rows); unjudged samples counted apart.

    With ``samples=k`` also the mean reward of k sampled completions per prompt at ``temperature``: the
    accuracy of the stochastic policy RL trains, which moves before the greedy answer does; and from the same
    samples pass@k for k in ``pass_k`` and maj@k for k in ``maj_k`` (:func:`k_metrics`; ``None``: the defaults
    of :func:`default_ks`). ``generate_fn`` replaces :func:`generate` (same signature): multi-turn episodes with
    tools (rewardkit.episodes) give the final answer of each episode.
    """
    gen = generate_fn or generate
    if n is not None:
        dataset = dataset.select(range(min(n, len(dataset))))
    prompts = list(dataset["prompt"])
    columns = {c: list(dataset[c]) for c in dataset.column_names if c not in ("prompt", "completion")}
    completions = gen(model, tokenizer, prompts, max_new_tokens, batch_size)
    score, unjudged = _mean(_scores(reward_fn, prompts, completions, columns))
    result = {"score": score, "n": len(prompts), "unjudged": unjudged,
              "examples": list(zip(prompts[:3], completions[:3]))}
    if samples:
        rep = [p for p in prompts for _ in range(samples)]
        rep_cols = {c: [v for v in vals for _ in range(samples)] for c, vals in columns.items()}
        sampled = gen(model, tokenizer, rep, max_new_tokens, batch_size, temperature)
        scores = _scores(reward_fn, rep, sampled, rep_cols)
        result["sampled_score"], result["sampled_unjudged"] = _mean(scores)
        result["samples"], result["temperature"] = samples, temperature
        ks = default_ks(samples)
        result.update(k_metrics(reward_fn, sampled, scores, samples, ks["pass_k"] if pass_k is None else pass_k,
                                ks["maj_k"] if maj_k is None else maj_k, correct_at))
    return result


# --------------------------------------------------------------------------- the recipe's keys
def check_threshold(section, registry, where: str = "eval") -> list[str]:
    """``correct_at`` of the ``eval`` section (rewardkit.recipe_schema.Eval) inside the range the eval reward
    declares (``score_range``), when it declares one: at or below the bottom every sample is correct, above the top
    none is. (pass_k and maj_k are checked by the section's own declaration.)"""
    from rewardkit.errors import PluginError  # noqa: PLC0415

    correct_at, reward = section.correct_at, section.reward.name if section.reward else None
    if correct_at is None or not isinstance(reward, str):
        return []
    try:
        score_range = getattr(registry.load("rewards", reward), "score_range", None)
    except PluginError:
        return []  # an unknown eval reward is reported by eval.reward's check
    if score_range and not score_range[0] < correct_at <= score_range[1]:
        low, high = score_range
        return [f"{where}.correct_at: {correct_at!r} is outside ({low:g}, {high:g}], the range eval's reward "
                f"'{reward}' scores in; every sample or none would count as correct"]
    return []


# --------------------------------------------------------------------------- the printed table
def k_columns(rows: list[dict]) -> list[tuple[str, str, str]]:
    """``(header, summary key, k)`` of every pass@k and maj@k some row reports, by k."""
    cols = []
    for field, label in (("pass_at_k", "pass"), ("maj_at_k", "maj")):
        ks = sorted({int(k) for r in rows for k in (r.get(field) or {})})
        cols += [(f"{label}@{k}", field, str(k)) for k in ks]
    return cols


def k_cell(row: dict, col: tuple[str, str, str]) -> str:
    m = (row.get(col[1]) or {}).get(col[2])
    if not m or m.get("value") is None:
        return "-"
    return f"{m['value']:.1%}" + (f" ±{m['se'] * 100:.1f}" if m.get("se") is not None else "")


def k_notes(rows: list[dict]) -> list[str]:
    """What the pass@k/maj@k columns mean, what was left out, and what is not available and why."""
    lines = []
    if any(r.get("pass_at_k") or r.get("maj_at_k") for r in rows):
        at = next(r["correct_at"] for r in rows if r.get("pass_at_k") or r.get("maj_at_k"))
        lines.append(f"  pass@k, maj@k: correct = score >= {at:g}; ± one standard error over problems")
    for field, label in (("pass_at_k", "pass"), ("maj_at_k", "maj")):
        for reason in dict.fromkeys(r[f"{field}_unavailable"] for r in rows if r.get(f"{field}_unavailable")):
            lines.append(f"  {label}@k: not available ({reason})")
        left: dict[str, int] = {}
        for r in rows:
            for k, m in (r.get(field) or {}).items():
                if m.get("left_out"):
                    left[f"{label}@{k}"] = max(left.get(f"{label}@{k}", 0), m["left_out"])
        if left:
            lines.append("  left out for want of judged samples: "
                         + ", ".join(f"{name} up to {n} problems" for name, n in left.items()))
    return lines
