"""``rewardkit show`` and ``rewardkit replay``: read what an RL stage generated (its rollout log) and re-score it.

``show RUN`` prints the logged groups of a run's RL stage readably (``--step N`` one step, ``--worst`` /
``--best`` the groups with the lowest / highest mean reward). ``replay RUN --reward NAME [--param k=v ...]``
scores every logged completion again with a registered reward (another one, or another version or setting of
the one trained with) and reports where the training signal would change: scores, the order of completions in
their group, and the sign of each completion's group-relative advantage (its total reward minus its group's
mean, the part of GRPO's advantage that decides its direction). When NAME (or ``--alias``) is the alias of a
logged component, the new scores replace that component in the weighted total and the other components stay;
otherwise the new reward is compared with the logged total on its own. Nothing is retrained.
"""

from __future__ import annotations

import math
import os

from rewardkit import rollout_log
from rewardkit.errors import RewardkitError


def stage_dir(run: str, stage: str | None) -> str:
    """The folder of ``stage`` (default: the last stage of ``run`` that wrote a rollout log)."""
    if not os.path.isdir(run):
        raise RewardkitError(f"RUN: no run folder at {run}")
    if stage is not None:
        path = os.path.join(run, stage)
        if not os.path.isfile(os.path.join(path, rollout_log.FILE)):
            raise RewardkitError(f"--stage: {path} has no {rollout_log.FILE} (only RL stages write one)")
        return path
    found = sorted((os.path.getmtime(os.path.join(run, d, rollout_log.FILE)), d) for d in os.listdir(run)
                   if os.path.isfile(os.path.join(run, d, rollout_log.FILE)))
    if not found:
        raise RewardkitError(f"RUN: no stage of {run} wrote a {rollout_log.FILE} (RL stages write one unless "
                             f"rollout_log.enabled is false)")
    return os.path.join(run, found[-1][1])


def _mean(values) -> float:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else float("nan")


def show(run: str, stage: str | None = None, step: int | None = None, order: str | None = None,
         groups: int = 3) -> str:
    """The logged groups as text: ``order`` None (latest first), "worst" or "best" (by mean total reward)."""
    path = stage_dir(run, stage)
    records = rollout_log.read(path, step)
    if not records:
        raise RewardkitError(f"--step: no logged completion at step {step} in {path}" if step is not None
                             else f"{path}: the rollout log holds no completion yet")
    grouped = rollout_log.groups(records)
    if order is None:
        grouped = grouped[::-1]
    else:
        grouped = sorted(grouped, key=lambda g: _mean(r["reward"] for r in g), reverse=order == "best")
    lines = [f"{os.path.join(path, rollout_log.FILE)}: {len(records)} completions in {len(rollout_log.groups(records))} "
             f"groups" + (f" at step {step}" if step is not None else "")]
    for g in grouped[:groups]:
        first = g[0]
        cols = ", ".join(f"{k}={v!r}" for k, v in first["columns"].items())
        lines.append(f"\nstep {first['step']}, rollout {first['rollout']}, group {first['group']}"
                     + (f", row {first['row']}" if first.get("row") is not None else "")
                     + f"; mean reward {_mean(r['reward'] for r in g):.3f}")
        lines.append(f"  prompt: {rollout_log.text(first['prompt'])!r}" + (f"   [{cols}]" if cols else ""))
        for r in sorted(g, key=lambda r: -(r["reward"] if r["reward"] is not None else -math.inf)):
            parts = ", ".join(f"{k} {'-' if v is None else f'{v:.3g}'}" for k, v in r["rewards"].items())
            reward = "could not judge" if r["reward"] is None else f"{r['reward']:+.3f}"
            lines.append(f"  {reward}  adv {r['advantage']:+.2f}  {r['finish_reason']:<9} {r['length']:>3} tok  "
                         f"{r['completion']!r}  ({parts})")
    return "\n".join(lines)


def _score(fn, records: list[dict]) -> list[float | None]:
    """``fn`` on the logged prompts and completions with their dataset columns, one batch per group (the way
    TRL calls a reward: columns as keyword lists)."""
    out: list[float | None] = []
    for g in rollout_log.groups(records):
        chat = isinstance(g[0]["prompt"], list)
        completions = [[{"role": "assistant", "content": r["completion"]}] if chat else r["completion"] for r in g]
        cols = {k: [r["columns"].get(k) for r in g] for k in g[0]["columns"]}
        scores = fn(prompts=[r["prompt"] for r in g], completions=completions,
                    completion_ids=[None] * len(g), **cols)
        out += [None if s is None or (isinstance(s, float) and math.isnan(s)) else float(s) for s in scores]
    return out


def replay(run: str, registry, reward: str, params: dict | None = None, stage: str | None = None,
           alias: str | None = None) -> dict:
    """Re-score a stage's logged completions with ``reward`` (module docstring); returns the comparison."""
    path = stage_dir(run, stage)
    records = [r for g in rollout_log.groups(rollout_log.read(path)) for r in g]  # group order, as _score scores
    if not records:
        raise RewardkitError(f"{path}: the rollout log holds no completion yet")
    fn = registry.build_reward(reward, params or {}, alias=alias or reward)
    new = _score(fn, records)
    component = alias or reward
    replaces = component in records[0]["rewards"]
    weights = records[0].get("weights", {})
    old_total = [r["reward"] for r in records]
    if replaces:
        old_part = [r["rewards"][component] for r in records]
        w = weights.get(component, 1.0)
        new_total = [None if t is None and n is None else (t or 0.0) - w * (o or 0.0) + w * (n or 0.0)
                     for t, o, n in zip(old_total, old_part, new)]
    else:
        old_part, new_total = old_total, new
    changed = [(o, n) for o, n in zip(old_part, new) if (o is None) != (n is None) or
               (o is not None and n is not None and abs(o - n) > 1e-9)]
    report = {"stage": os.path.basename(path), "reward": reward, "params": params or {}, "completions": len(records),
              "compared_with": f"component '{component}'" if replaces else "the logged total reward",
              "scores_changed": len(changed),
              "judged_changed": sum((o is None) != (n is None) for o, n in changed),
              "mean_abs_change": _mean(abs(o - n) for o, n in changed if o is not None and n is not None)
              if changed else 0.0}
    report.update(_signal_changes(records, old_total, new_total))
    return report


def _signal_changes(records, old_total, new_total) -> dict:
    """Groups whose best completion or whose order changes, completions whose advantage changes sign."""
    groups = rank = flips = 0
    i = 0
    for g in rollout_log.groups(records):
        o, n = old_total[i:i + len(g)], new_total[i:i + len(g)]
        i += len(g)
        if any(v is None for v in o + n):
            continue
        groups += 1
        order_o = sorted(range(len(g)), key=lambda k: (-o[k], k))
        order_n = sorted(range(len(g)), key=lambda k: (-n[k], k))
        rank += order_o != order_n
        mo, mn = sum(o) / len(o), sum(n) / len(n)
        flips += sum((a - mo > 1e-9 and b - mn < -1e-9) or (a - mo < -1e-9 and b - mn > 1e-9) for a, b in zip(o, n))
    return {"groups_compared": groups, "group_rankings_changed": rank, "advantage_sign_flips": flips}


def format_report(rep: dict) -> str:
    return (f"stage '{rep['stage']}': {rep['completions']} logged completions re-scored with {rep['reward']}"
            f"{' ' + str(rep['params']) if rep['params'] else ''}, compared with {rep['compared_with']}\n"
            f"  scores changed: {rep['scores_changed']} (judged/could-not-judge changed: {rep['judged_changed']}; "
            f"mean |change| {rep['mean_abs_change']:.4g})\n"
            f"  groups whose ranking changed: {rep['group_rankings_changed']} of {rep['groups_compared']}\n"
            f"  completions whose advantage changes sign: {rep['advantage_sign_flips']}")
