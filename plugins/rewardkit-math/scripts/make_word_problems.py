"""Generate rewardkit_math/data/word_problems.jsonl: seeded one-step add/subtract word problems.

Run: python plugins/rewardkit-math/scripts/make_word_problems.py   (rewrites the file; output is deterministic)

Small numbers (first 2..12, second 1..9, never a negative result) and a handful of templates, so that a
3-layer character-level model can learn to read the two numbers and the verb's direction.
"""

import json
import random
from pathlib import Path

N_ROWS = 600
SEED = 1234
NAMES = ["Ann", "Ben", "Cara", "Dev", "Eli", "Fay", "Gus", "Ida", "Jon", "Kim", "Leo", "Mia", "Ned", "Ola"]
ITEMS = ["apples", "pens", "cards", "books", "shells", "coins", "stamps", "eggs", "cups", "toys"]
ADD = ["buys {b} more", "finds {b} more", "gets {b} more", "is given {b} more"]
SUB = ["eats {b}", "loses {b}", "gives away {b}", "sells {b}"]
TEMPLATES = [
    "{name} has {a} {item}. {name} {verb}. How many {item} does {name} have now?",
    "There are {a} {item} with {name}. Then {name} {verb}. How many {item} are left with {name}?",
]


def make(rng: random.Random) -> dict:
    add = rng.random() < 0.5
    a, b = rng.randint(2, 12), rng.randint(1, 9)
    if not add:
        b = min(b, a)
    verb = rng.choice(ADD if add else SUB).format(b=b)
    question = rng.choice(TEMPLATES).format(name=rng.choice(NAMES), a=a, item=rng.choice(ITEMS), verb=verb)
    n = a + b if add else a - b
    return {"question": question, "answer": f"#### {n}", "solution": f"\\boxed{{{n}}}"}


def main() -> None:
    rng = random.Random(SEED)
    rows, seen = [], set()
    while len(rows) < N_ROWS:
        row = make(rng)
        if row["question"] not in seen:
            seen.add(row["question"])
            rows.append(row)
    out = Path(__file__).resolve().parents[1] / "rewardkit_math" / "data" / "word_problems.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    print(f"wrote {len(rows)} rows to {out}")


if __name__ == "__main__":
    main()
