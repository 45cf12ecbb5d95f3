"""A tool-use task a tiny model cannot solve in its weights in minutes but can with a tool: multi-digit
multiplication with a calculator.

``calculator`` (environment): one tool, ``mul(a, b)``. ``tool_multiplication`` (dataset): ``a*b=`` prompts as chat
messages, the product as ``answer``, and for SFT a ``completion`` that is the whole episode: the call, the tool's
result, the answer (SFT with ``assistant_only_loss`` trains on the two assistant turns, not on the result).
"""

from __future__ import annotations

import random

from rewardkit.environments import Environment

TOOL_MULTIPLICATION_COLUMNS = ["prompt", "completion", "answer"]
MAX_FACTOR = 10 ** 9  # the calculator refuses larger factors: the model's error, shown to it


class Calculator(Environment):
    """One tool, ``mul``: the product of two integers."""

    def reset(self, **row) -> str | None:
        return None

    def mul(self, a: int, b: int) -> str:
        """Multiply two integers.

        Args:
            a: the first factor
            b: the second factor
        """
        if isinstance(a, bool) or isinstance(b, bool) or not isinstance(a, int) or not isinstance(b, int):
            raise ValueError(f"mul takes two integers, got {a!r} and {b!r}")
        if abs(a) > MAX_FACTOR or abs(b) > MAX_FACTOR:
            raise ValueError(f"factors above {MAX_FACTOR} are not supported")
        return str(a * b)


def _check_factors(digits: int, n_test: int, n_val: int, n_train: int) -> None:
    """ValueError where ``digits``-digit factors cannot give the held-out splits asked for."""
    if not 1 <= digits <= 9:
        raise ValueError(f"digits: must be between 1 and 9, got {digits!r}")
    pairs = (10 ** digits - 10 ** (digits - 1)) ** 2
    needed = n_test + n_val + (1 if n_train > 0 else 0)  # training draws from the pairs not held out
    if needed > pairs:
        raise ValueError(f"digits: {digits}-digit factors make only {pairs} distinct problems, fewer than "
                         f"n_test + n_val = {n_test + n_val} held-out ones"
                         f"{' plus at least one left for training' if n_train > 0 else ''}; raise digits or "
                         f"lower n_test/n_val")


def _factors(digits: int, seed: int, n_test: int, n_val: int, n_train: int):
    """Distinct held-out problems (test, then validation), and training problems drawn from the rest."""
    _check_factors(digits, n_test, n_val, n_train)
    lo, hi = 10 ** (digits - 1), 10 ** digits - 1
    rng = random.Random(seed)
    held: list[tuple[int, int]] = []
    seen: set[tuple[int, int]] = set()
    while len(held) < n_test + n_val:
        pair = (rng.randint(lo, hi), rng.randint(lo, hi))
        if pair not in seen:
            seen.add(pair)
            held.append(pair)
    train = []
    while len(train) < n_train:
        pair = (rng.randint(lo, hi), rng.randint(lo, hi))
        if pair not in seen:
            train.append(pair)
    return train, held[:n_test], held[n_test:]


def episode(a: int, b: int, tool: str = "mul") -> list[dict]:
    """The ideal episode after the prompt: call the tool, read its result, answer with it."""
    call = {"type": "function", "function": {"name": tool, "arguments": {"a": a, "b": b}}}
    return [{"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "name": tool, "content": str(a * b)},
            {"role": "assistant", "content": str(a * b)}]


def tool_multiplication(n_train: int = 5000, n_test: int = 300, n_val: int = 0, digits: int = 3, seed: int = 0):
    """``a*b=`` with ``digits``-digit factors: ``train``, distinct ``test`` and (``n_val > 0``) ``validation``."""
    from datasets import Dataset, DatasetDict

    train, test, val = _factors(digits, seed, n_test, n_val, n_train)

    def rows(pairs):
        return {"prompt": [[{"role": "user", "content": f"{a}*{b}="}] for a, b in pairs],
                "completion": [episode(a, b) for a, b in pairs], "answer": [str(a * b) for a, b in pairs]}

    splits = {"train": rows(train), "test": rows(test)} | ({"validation": rows(val)} if val else {})
    return DatasetDict({k: Dataset.from_dict(v) for k, v in splits.items()})


def _splits(n_train: int = 5000, n_test: int = 300, n_val: int = 0, digits: int = 3, **_) -> list[str]:
    _check_factors(digits, n_test, n_val, n_train)
    return ["train", "test"] + (["validation"] if n_val else [])


# Read by validation (rewardkit.data.splits) without building the data; a ValueError names a parameter the loader
# would refuse.
tool_multiplication.splits = _splits
