"""Bundled synthetic datasets: generated, seeded, offline.

- ``arithmetic``: ``a+b=`` prompts with an ``answer`` column (and ``completion`` for SFT), train/test split
  with no test problem in train (and, with ``n_val``, a ``validation`` split in neither).
- ``arithmetic_preferences``: the same problems as preference pairs (``chosen`` = right answer,
  ``rejected`` = a plausible wrong one) for DPO and reward-model training.
"""

from __future__ import annotations

import os
import random

ARITHMETIC_COLUMNS = ["prompt", "completion", "answer"]
PREFERENCE_COLUMNS = ["prompt", "chosen", "rejected", "answer"]
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


FORMATS = ("plain", "reversed")


def _check_problems(max_operand: int, ops: str, n_test: int, n_val: int) -> None:
    """ValueError where the parameters cannot give the splits :func:`_problems` makes (checked without making them)."""
    for op in ops:
        if op not in _OPS:
            raise ValueError(f"ops: unknown operator {op!r}; choose from {''.join(_OPS)}")
    total = len(ops) * max(max_operand, 0) ** 2
    if n_val < 0 or n_test + n_val >= total:
        raise ValueError(f"n_test={n_test} and n_val={n_val} leave no training problems ({total} exist)")


def _problems(max_operand: int, ops: str, seed: int, n_test: int, n_train: int, n_val: int = 0):
    """Training problems (``n_train``, sampled with replacement), ``n_test`` distinct held-out ones and
    ``n_val`` distinct validation ones, the three disjoint. ``n_val=0`` gives the same train/test as before
    validation splits existed."""
    _check_problems(max_operand, ops, n_test, n_val)
    problems = [(a, op, b) for op in ops for a in range(max_operand) for b in range(max_operand)]
    random.Random(seed).shuffle(problems)
    pool, test, val = problems[n_test + n_val:], problems[:n_test], problems[n_test:n_test + n_val]
    rng = random.Random(seed + 1)
    return [rng.choice(pool) for _ in range(n_train)], test, val


def _layout(a: int, op: str, b: int, result: int, max_operand: int, fmt: str) -> tuple[str, str]:
    """``(prompt, answer)`` of one problem in format ``fmt``.

    ``plain``: ``7+45=`` -> ``52``. ``reversed``: operands zero-padded to the width of ``max_operand - 1``
    and the result written least-significant digit first, zero-padded to one more digit (``07+45=`` ->
    ``250``; a negative result keeps its sign in front: ``-250``). Emitting the low digit first lets each
    output digit depend only on aligned input digits and the carry already written, which is why small
    transformers learn addition in this layout far more reliably (Lee et al. 2023, "Teaching Arithmetic to
    Small Transformers", arXiv:2307.03381).
    """
    if fmt == "plain":
        return f"{a}{op}{b}=", str(result)
    if fmt != "reversed":
        raise ValueError(f"format: {fmt!r} is not one of {', '.join(FORMATS)}")
    width = len(str(max(max_operand - 1, 1)))
    digits = f"{abs(result):0{width + 1 if op != '*' else 2 * width}d}"[::-1]
    return f"{a:0{width}d}{op}{b:0{width}d}=", ("-" if result < 0 else "") + digits


def arithmetic(n_train: int = 20000, n_test: int = 300, max_operand: int = 100, ops: str = "+",
               seed: int = 0, n_val: int = 0, format: str = "plain"):  # noqa: A002 - the recipe's word
    """Return a DatasetDict with ``train`` (sampled with replacement from the training problems), ``test``
    (distinct held-out problems) and, when ``n_val > 0``, ``validation`` (distinct problems in neither, for
    choosing when to stop without looking at ``test``). ``format``: ``plain`` or ``reversed`` (see
    :func:`_layout`).
    """
    from datasets import Dataset, DatasetDict

    if format not in FORMATS:
        raise ValueError(f"format: {format!r} is not one of {', '.join(FORMATS)}")
    train, test, val = _problems(max_operand, ops, seed, n_test, n_train, n_val)

    def rows(items):
        out = {c: [] for c in ARITHMETIC_COLUMNS}
        for a, op, b in items:
            prompt, ans = _layout(a, op, b, _OPS[op](a, b), max_operand, format)
            out["prompt"].append(prompt)
            out["completion"].append(ans)
            out["answer"].append(ans)
        return out

    splits = {"train": rows(train), "test": rows(test)} | ({"validation": rows(val)} if val else {})
    return DatasetDict({k: Dataset.from_dict(v) for k, v in splits.items()})


def _wrong(answer: int, rng: random.Random) -> int:
    """A plausible wrong answer: off by a small amount, or two digits swapped."""
    while True:
        s = str(abs(answer))
        if len(s) > 1 and rng.random() < 0.3:
            i = rng.randrange(len(s) - 1)
            cand = int(s[:i] + s[i + 1] + s[i] + s[i + 2:]) * (1 if answer >= 0 else -1)
        else:
            cand = answer + rng.choice([-10, -2, -1, 1, 2, 10])
        if cand != answer:
            return cand


def arithmetic_preferences(n_train: int = 4000, n_test: int = 300, max_operand: int = 100, ops: str = "+",
                           seed: int = 0, n_val: int = 0, format: str = "plain"):  # noqa: A002
    """Preference pairs over the arithmetic problems: ``chosen`` is right, ``rejected`` plausibly wrong; the
    same held-out (and validation) problems as :func:`arithmetic` with the same parameters, in the same
    ``format``."""
    from datasets import Dataset, DatasetDict

    if format not in FORMATS:
        raise ValueError(f"format: {format!r} is not one of {', '.join(FORMATS)}")
    train, test, val = _problems(max_operand, ops, seed, n_test, n_train, n_val)
    rng = random.Random(seed + 2)  # draws the wrong answers

    def rows(items):
        out = {c: [] for c in PREFERENCE_COLUMNS}
        for a, op, b in items:
            ans = _OPS[op](a, b)
            prompt, chosen = _layout(a, op, b, ans, max_operand, format)
            out["prompt"].append(prompt)
            out["chosen"].append(chosen)
            out["rejected"].append(_layout(a, op, b, _wrong(ans, rng), max_operand, format)[1])
            out["answer"].append(chosen)
        return out

    splits = {"train": rows(train), "test": rows(test)} | ({"validation": rows(val)} if val else {})
    return DatasetDict({k: Dataset.from_dict(v) for k, v in splits.items()})


def _with_validation(n_test: int = 300, max_operand: int = 100, ops: str = "+", n_val: int = 0,
                     format: str = "plain", **_) -> list[str]:  # noqa: A002
    if format not in FORMATS:
        raise ValueError(f"format: {format!r} is not one of {', '.join(FORMATS)}")
    _check_problems(max_operand, ops, n_test, n_val)
    return ["train", "test"] + (["validation"] if n_val else [])


# The splits each loader returns for its params, read by validation (rewardkit.data.splits) without building them;
# a ValueError names a parameter the loader would refuse (reported by validation, before anything loads).
arithmetic.splits = arithmetic_preferences.splits = _with_validation


# --------------------------------------------------------------------------- string reversal (RLHF toy)
REVERSE_COLUMNS = ["prompt", "completion", "answer"]
REVERSE_PREFERENCE_COLUMNS = ["prompt", "chosen", "rejected", "answer"]


def _strings(length: int, alphabet: str, seed: int, n_test: int):
    """All distinct strings of ``length`` over ``alphabet``, shuffled by ``seed``, the first ``n_test`` held out."""
    if len(set(alphabet)) < 2 or length < 2:
        raise ValueError(f"alphabet needs >= 2 distinct characters and length >= 2 (got {alphabet!r}, {length})")
    total = len(alphabet) ** length
    if n_test >= total:
        raise ValueError(f"n_test={n_test} leaves no training strings ({total} exist)")
    rng = random.Random(seed)
    # Sample without enumerating huge spaces: draw distinct strings until the pool is big enough.
    pool_size = min(total, 20000)
    pool: set[str] = set()
    while len(pool) < pool_size:
        pool.add("".join(rng.choice(alphabet) for _ in range(length)))
    strings = sorted(pool)
    rng.shuffle(strings)
    return strings[n_test:], strings[:n_test]


def reverse(n_train: int = 10000, n_test: int = 300, length: int = 4, alphabet: str = "abcdefghij", seed: int = 0):
    """``abcd=`` -> ``dcba``: prompts, SFT completions and an ``answer`` column; held-out strings never in train."""
    from datasets import Dataset, DatasetDict

    train_pool, test = _strings(length, alphabet, seed, n_test)
    rng = random.Random(seed + 1)
    train = [rng.choice(train_pool) for _ in range(n_train)]

    def rows(items):
        return {"prompt": [f"{s}=" for s in items], "completion": [s[::-1] for s in items],
                "answer": [s[::-1] for s in items]}

    return DatasetDict(train=Dataset.from_dict(rows(train)), test=Dataset.from_dict(rows(test)))


def _corrupt(answer: str, alphabet: str, rng: random.Random) -> str:
    """A near miss: one character replaced, or two neighbours swapped."""
    while True:
        chars = list(answer)
        i = rng.randrange(len(chars))
        if rng.random() < 0.3 and i + 1 < len(chars):
            chars[i], chars[i + 1] = chars[i + 1], chars[i]
        else:
            chars[i] = rng.choice(alphabet)
        cand = "".join(chars)
        if cand != answer:
            return cand


def reverse_preferences(n_train: int = 10000, n_test: int = 300, length: int = 4, alphabet: str = "abcdefghij",
                        seed: int = 0):
    """Reversal preference pairs: ``chosen`` is the reversed string, ``rejected`` a near miss. Same held-out
    strings as :func:`reverse` with the same parameters."""
    from datasets import Dataset, DatasetDict

    train_pool, test = _strings(length, alphabet, seed, n_test)
    rng = random.Random(seed + 2)
    train = [rng.choice(train_pool) for _ in range(n_train)]

    def rows(items):
        out = {c: [] for c in REVERSE_PREFERENCE_COLUMNS}
        for s in items:
            out["prompt"].append(f"{s}=")
            out["chosen"].append(s[::-1])
            out["rejected"].append(_corrupt(s[::-1], alphabet, rng))
            out["answer"].append(s[::-1])
        return out

    return DatasetDict(train=Dataset.from_dict(rows(train)), test=Dataset.from_dict(rows(test)))


def reverse_policy_preferences(policy: str, samples: int = 4, temperature: float = 1.0, n_train: int = 4000,
                               n_test: int = 300, length: int = 4, alphabet: str = "abcdefghij", seed: int = 0):
    """Reversal preference pairs whose ``rejected`` side is the policy's own mistake (on-policy negatives, as
    when labellers compare a policy's samples): for each string, ``samples`` completions are drawn from the
    causal LM at ``policy`` at ``temperature``, and the first wrong one is ``rejected``; where all were right, a
    synthetic near miss stands in. Held-out strings are those of :func:`reverse` with the same parameters."""
    from datasets import Dataset, DatasetDict

    if not os.path.isdir(policy):
        raise ValueError(f"policy: no model directory at {policy!r} (it must be written by an earlier stage)")
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    import torch  # noqa: PLC0415
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415

    from rewardkit.evaluate import generate  # noqa: PLC0415

    model, tok = AutoModelForCausalLM.from_pretrained(policy), AutoTokenizer.from_pretrained(policy)
    train_pool, test = _strings(length, alphabet, seed, n_test)
    rng = random.Random(seed + 3)
    train = [rng.choice(train_pool) for _ in range(n_train)]

    def rows(items):
        prompts = [f"{s}=" for s in items]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            outs = generate(model, tok, [p for p in prompts for _ in range(samples)], max_new_tokens=length + 1,
                            batch_size=512, temperature=temperature)
        out = {c: [] for c in REVERSE_PREFERENCE_COLUMNS}
        for i, (p, s) in enumerate(zip(prompts, items)):
            gold = s[::-1]
            wrong = [o.strip() for o in outs[i * samples:(i + 1) * samples] if o.strip() != gold]
            out["prompt"].append(p)
            out["chosen"].append(gold)
            out["rejected"].append(wrong[0] if wrong else _corrupt(gold, alphabet, rng))
            out["answer"].append(gold)
        return out

    return DatasetDict(train=Dataset.from_dict(rows(train)), test=Dataset.from_dict(rows(test)))


def _train_test(**_) -> list[str]:
    return ["train", "test"]


reverse.splits = reverse_preferences.splits = reverse_policy_preferences.splits = _train_test
