"""``code.problems``: the bundled set of small programming problems (stdin/stdout and function-call)."""

from __future__ import annotations

import json
import os
import random

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "problems.jsonl")
COLUMNS = ["id", "style", "question", "tests"]
STYLES = ("all", "stdio", "call")


def read_problems(path: str = DATA) -> list[dict]:
    """Every problem as a dict (``tests`` as a list, ``solution`` the reference program)."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def load_problems(test_size: float | int = 0.25, seed: int = 0, style: str = "all"):
    """``DatasetDict(train, test)``; ``tests`` is a JSON string (cases mix shapes, Arrow wants one type).
    The reference solutions stay out of the dataset."""
    from datasets import Dataset, DatasetDict  # noqa: PLC0415

    if style not in STYLES:
        raise ValueError(f"code.problems param 'style' must be one of {STYLES}, got {style!r}")
    rows = [p for p in read_problems() if style == "all" or p["style"] == style]
    if isinstance(test_size, bool) or not isinstance(test_size, (int, float)):
        raise ValueError(f"code.problems param 'test_size' must be a fraction or a count, got {test_size!r}")
    n_test = int(round(test_size * len(rows))) if isinstance(test_size, float) and test_size < 1 else int(test_size)
    if not 0 <= n_test < len(rows):
        raise ValueError(f"code.problems param 'test_size' must leave at least one training problem "
                         f"(got {test_size!r} for {len(rows)} problems)")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    test_idx = set(order[:n_test])

    def build(idx):
        return Dataset.from_dict({
            "id": [rows[i]["id"] for i in idx],
            "style": [rows[i]["style"] for i in idx],
            "question": [rows[i]["question"] for i in idx],
            "tests": [json.dumps(rows[i]["tests"]) for i in idx],
        })

    train = [i for i in range(len(rows)) if i not in test_idx]
    test = [i for i in range(len(rows)) if i in test_idx]
    return DatasetDict(train=build(train), test=build(test))


load_problems.splits = lambda **params: ["train", "test"]  # read by rewardkit's validation (no data built)
