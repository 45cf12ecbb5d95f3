"""Generate ``gsm8k_sample.jsonl``: seeded two-step word problems in GSM8K's row format, the local stand-in for
the hub dataset ``openai/gsm8k`` under ``rewardkit run RECIPE --smoke``.

Run: python -m rewardkit.smoke.gsm8k_sample   (rewrites the file; the output is deterministic)

Each row has GSM8K's columns and answer layout: ``question`` and ``answer`` = reasoning lines with calculator
annotations (``48/2 = <<48/2=24>>24``) and a final ``#### N`` line. The problems are synthetic (no GSM8K text).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

PATH = Path(__file__).with_name("gsm8k_sample.jsonl")
N_ROWS, SEED = 160, 8
NAMES = ["Ava", "Bruno", "Chen", "Dana", "Emeka", "Farah", "Goran", "Hana", "Ines", "Jamal", "Keiko", "Luis"]
ITEMS = ["stickers", "marbles", "cookies", "pencils", "tickets", "beads", "cards", "apples"]


def _calc(expr: str, value: int) -> str:
    return f"{expr} = <<{expr.replace(' ', '')}={value}>>{value}"


def _packs(r: random.Random, name: str, item: str) -> tuple[str, list[str], int]:
    a, b = r.randint(2, 9), r.randint(3, 12)
    c = r.randint(1, a * b - 1)
    q = (f"{name} buys {a} packs of {item} with {b} {item} in each pack and gives {c} of them to a friend. "
         f"How many {item} does {name} have left?")
    return q, [f"{name} buys {_calc(f'{a} * {b}', a * b)} {item}.",
               f"After giving {c} away, {name} has {_calc(f'{a * b} - {c}', a * b - c)} {item} left."], a * b - c


def _wages(r: random.Random, name: str, _item: str) -> tuple[str, list[str], int]:
    a, b, c = r.randint(8, 25), r.randint(2, 8), r.randint(2, 6)
    q = f"{name} earns ${a} an hour and works {b} hours a day. How much does {name} earn in {c} days?"
    return q, [f"In one day {name} earns {_calc(f'{a} * {b}', a * b)} dollars.",
               f"In {c} days {name} earns {_calc(f'{a * b} * {c}', a * b * c)} dollars."], a * b * c


def _more(r: random.Random, name: str, item: str) -> tuple[str, list[str], int]:
    other = r.choice([n for n in NAMES if n != name])
    a, b = r.randint(5, 60), r.randint(2, 30)
    q = f"{name} has {a} {item}. {other} has {b} more {item} than {name}. How many {item} do they have together?"
    return q, [f"{other} has {_calc(f'{a} + {b}', a + b)} {item}.",
               f"Together they have {_calc(f'{a} + {a + b}', 2 * a + b)} {item}."], 2 * a + b


def _half(r: random.Random, name: str, item: str) -> tuple[str, list[str], int]:
    a = 2 * r.randint(6, 40)
    q = (f"{name} sold {a} {item} in April and half as many in May. "
         f"How many {item} did {name} sell in April and May altogether?")
    return q, [f"In May {name} sold {_calc(f'{a} / 2', a // 2)} {item}.",
               f"Altogether {name} sold {_calc(f'{a} + {a // 2}', a + a // 2)} {item}."], a + a // 2


def _share(r: random.Random, name: str, item: str) -> tuple[str, list[str], int]:
    k, each = r.randint(2, 6), r.randint(3, 15)
    extra = r.randint(1, 20)
    total = k * each + extra
    q = (f"{name} has {total} {item}, keeps {extra} and shares the rest equally among {k} friends. "
         f"How many {item} does each friend get?")
    return q, [f"{name} shares {_calc(f'{total} - {extra}', total - extra)} {item}.",
               f"Each friend gets {_calc(f'{total - extra} / {k}', each)} {item}."], each


TEMPLATES = [_packs, _wages, _more, _half, _share]


def rows(n: int = N_ROWS, seed: int = SEED) -> list[dict]:
    r = random.Random(seed)
    out = []
    for i in range(n):
        question, steps, answer = TEMPLATES[i % len(TEMPLATES)](r, r.choice(NAMES), r.choice(ITEMS))
        out.append({"question": question, "answer": "\n".join(steps) + f"\n#### {answer}"})
    r.shuffle(out)
    return out


def render() -> str:
    return "".join(json.dumps(row) + "\n" for row in rows())


if __name__ == "__main__":
    PATH.write_text(render(), encoding="utf-8")
    print(f"wrote {N_ROWS} rows to {PATH}")
