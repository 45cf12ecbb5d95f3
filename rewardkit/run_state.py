"""What a run leaves on disk and how the next run reads it: per-stage ``stage.json``, checkpoints, the log to
rewind, and the plan (which stage is reused, which resumes from which checkpoint, which trains afresh).

A stage is reused or resumed only if everything that decides what it trains (``stage_config``) hashes to the
fingerprint stored with it; otherwise the run refuses with the keys that changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any

from rewardkit.errors import RecipeError
from rewardkit.report import REPORT_KEYS
from rewardkit.values import given

STAGE_FILE = "stage.json"  # {"status": "running" | "done", "fingerprint", "config", "info", "eval", ...}
SUMMARY_FILE = "summary.json"
RESUME_MODES = ("auto", "require", "never")
PLOTS_DIR = "plots"  # rewardkit.plot writes a run's PNGs into output_dir/plots
RESERVED = (SUMMARY_FILE, PLOTS_DIR, "smoke.json")  # what output_dir holds besides one directory per stage
_CKPT = re.compile(r"^checkpoint-(\d+)$")


def read_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def write_json(path: str, data) -> None:
    """Write atomically: a killed process leaves the old file or the new one, never half of one."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, default=str)
    os.replace(tmp, path)


def dir_problem(path: str) -> str | None:
    """Why no directory can be created and written at ``path``, or None. Creates nothing that stays: it makes
    (and removes) a temporary directory in the deepest part of ``path`` that exists, which also catches paths
    ``os.access`` passes for root, under /proc or on a read-only mount."""
    if "\0" in path:
        return f"{path!r} contains a NUL byte"
    if any(len(os.fsencode(part)) > 255 for part in path.split(os.sep)):
        return f"{path}: a part of the path is longer than 255 bytes"
    if os.path.lexists(path) and not os.path.isdir(path):
        return f"{path} is {_what(path)}, not a directory"
    probe = os.path.abspath(path)
    while not os.path.lexists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        return f"{probe} is {_what(probe)}, not a directory"
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".rewardkit-write-check-", dir=probe))
    except OSError as exc:
        return f"cannot create a directory in {probe}: {exc.strerror or exc}"
    return None


def _plain_name(name: str) -> bool:
    """A name that is one directory entry on every platform: no separator, not . or .., no NUL, <= 255 bytes."""
    return name not in ("", ".", "..") and not any(c in name for c in "/\\\0") and len(os.fsencode(name)) <= 255


def _what(path: str) -> str:
    return "a broken symbolic link" if os.path.islink(path) and not os.path.exists(path) else "a file"


def output_problems(recipe) -> list[str]:
    """What stops a run from writing its outputs: ``output_dir`` that cannot be a writable directory, a stage
    whose name is not a plain directory name (``../x``) or is one of ``RESERVED``, or one of those paths taken by
    something of the wrong kind. Checked by validation and again before a run changes anything on disk."""
    bad = dir_problem(recipe.output_dir)
    if bad:
        return [f"output_dir: {bad}"]
    problems = []
    for spec in recipe.stages:
        path = os.path.join(recipe.output_dir, spec.name)
        if not _plain_name(spec.name):
            problems.append(f"stage name {spec.name!r}: a stage's name is its directory in output_dir; use a "
                            f"plain name (letters, digits, '_', '-', '.'), not a path")
        elif spec.name in RESERVED:
            problems.append(f"stage name {spec.name!r}: taken in output_dir (the run writes {', '.join(RESERVED)} "
                            f"there); rename the stage")
        elif os.path.lexists(path) and not os.path.isdir(path):
            problems.append(f"stages.{spec.name}: {path} is {_what(path)}; the stage writes its checkpoints and "
                            f"model into that directory")
    for name, want_dir in ((SUMMARY_FILE, False), (PLOTS_DIR, True)):
        path = os.path.join(recipe.output_dir, name)
        if os.path.lexists(path) and os.path.isdir(path) != want_dir:
            problems.append(f"output_dir: {path} is {'not ' if want_dir else ''}a directory; the run writes "
                            f"{'its plots into it' if want_dir else 'its summary there'}")
    return problems


def checkpoints(stage_dir: str) -> list[tuple[int, str, bool]]:
    """``(step, path, complete)`` of every ``checkpoint-N`` in a stage directory, oldest first.

    transformers writes ``trainer_state.json`` last, so a checkpoint without one was cut short by a kill.
    """
    if not os.path.isdir(stage_dir):
        return []
    found = []
    for entry in os.listdir(stage_dir):
        m = _CKPT.match(entry)
        path = os.path.join(stage_dir, entry)
        if m and os.path.isdir(path):
            found.append((int(m.group(1)), path, os.path.exists(os.path.join(path, "trainer_state.json"))))
    return sorted(found)


def last_checkpoint(stage_dir: str) -> tuple[int, str] | None:
    complete = [(step, path) for step, path, ok in checkpoints(stage_dir) if ok]
    return complete[-1] if complete else None


def stage_config(recipe, spec, previous: str | None) -> dict:
    """Everything that decides what a stage trains; a finished stage is reused only if this is unchanged. Where
    training is reported (``report_to``, rewardkit.report) does not decide it."""
    args = {k: v for k, v in spec.trainer_args.items() if k not in REPORT_KEYS}
    return {"trainer": spec.trainer_type, "trainer_args": args,
            "rewards": [dataclasses.asdict(b) for b in spec.rewards], "model": spec.model, "data": spec.data,
            "reward_faults": given(spec.reward_faults), "seed": recipe.seed, "after": previous,
            **({"early_stop": given(spec.early_stop), "eval": _stopping_eval(recipe),
                **_stopping_episodes(recipe)} if spec.early_stop else {}),
            **({"environment": spec.environment} if spec.environment else {}),
            **({"tools": spec.tools} if spec.tools else {})}


def fingerprint(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def changed_keys(old: dict, new: dict) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [k for k in keys if json.dumps(old.get(k), sort_keys=True, default=str)
            != json.dumps(new.get(k), sort_keys=True, default=str)]


def eval_key(recipe, data: dict) -> str:
    """What a held-out score depends on besides the stage's model; a stored score is reused only if it matches."""
    return fingerprint({"eval": _eval(recipe), "data": data, "base": recipe.model, "seed": recipe.seed})


def _eval(recipe) -> dict | None:
    return given(recipe.eval) if recipe.eval else None


# What of eval: an early_stop criterion scores with (its own split and n; greedy only): the rest of eval: (samples,
# pass@k, the reported split) does not change what a stage with early_stop trains, so changing it reuses the stage.
STOPPING_EVAL_KEYS = ("reward", "max_new_tokens", "batch_size")


def _stopping_eval(recipe) -> dict | None:
    return {k: v for k, v in (_eval(recipe) or {}).items() if k in STOPPING_EVAL_KEYS} or None


def _stopping_episodes(recipe) -> dict:
    """An early_stop criterion scores whole episodes in the evaluation stage's environment, with its tool-call
    limit (rewardkit.episodes.from_recipe), when the recipe has one."""
    from rewardkit.environments import evaluation_stage, tool_call_limit  # noqa: PLC0415

    env = evaluation_stage(recipe)
    if env is None:
        return {}
    return {"episodes": {"environment": env.environment, "max_tool_calls": tool_call_limit(env)}}


def rewind_log(path: str, step: int) -> int:
    """Keep the records up to ``step`` (what the checkpoint continues from) in ``log.jsonl``.

    Records after it belong to steps the kill threw away and that the resumed run trains again; they move,
    unchanged, to ``log.discarded.jsonl`` (appended), so no step is logged twice and nothing is deleted.
    Returns how many records moved.
    """
    if not os.path.exists(path):
        return 0
    keep, drop = [], []
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                ok = isinstance(row, dict) and row.get("step", step + 1) <= step
            except json.JSONDecodeError:
                ok = False  # a line cut short by the kill
            (keep if ok else drop).append(line if line.endswith("\n") else line + "\n")
    if drop:
        with open(os.path.join(os.path.dirname(path), "log.discarded.jsonl"), "a") as f:
            f.writelines(drop)
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            f.writelines(keep)
        os.replace(tmp, path)
    return len(drop)


def clear_stage(stage_dir: str, everything: bool) -> None:
    """Remove a previous attempt's stage outputs (all of them, or only what a fresh attempt would clash with)."""
    if not os.path.isdir(stage_dir):
        return
    if everything:
        shutil.rmtree(stage_dir)
        return
    for _, path, _ in checkpoints(stage_dir):
        shutil.rmtree(path, ignore_errors=True)
    for name in ("log.jsonl", STAGE_FILE):
        if os.path.exists(os.path.join(stage_dir, name)):
            os.remove(os.path.join(stage_dir, name))


@dataclass
class StagePlan:
    """One stage as this run finds it on disk."""

    spec: Any  # rewardkit.recipe.StageSpec
    dir: str
    config: dict
    fingerprint: str
    state: dict = field(default_factory=dict)  # the stage.json a previous run left ({} if none)
    ckpt: tuple[int, str] | None = None  # the last complete checkpoint

    @property
    def done(self) -> bool:
        return self.state.get("status") == "done"


def clear_previous(recipe) -> None:
    """``--fresh``: remove this recipe's stage outputs and summary (nothing else in ``output_dir``)."""
    for spec in recipe.stages:
        clear_stage(os.path.join(recipe.output_dir, spec.name), everything=True)
    path = os.path.join(recipe.output_dir, SUMMARY_FILE)
    if os.path.exists(path):
        os.remove(path)


def plan(recipe, resume: str) -> tuple[list[StagePlan], bool]:
    """Each stage's plan, and whether anything is resumed; refuses (RecipeError) a stage trained with another
    configuration, or ``--resume`` with nothing to resume. Reads only: nothing is loaded or changed."""
    plans, previous = [], None
    for spec in recipe.stages:
        config = stage_config(recipe, spec, previous)
        previous = fingerprint(config)
        stage_dir = os.path.join(recipe.output_dir, spec.name)
        plans.append(StagePlan(spec, stage_dir, config, previous, read_json(os.path.join(stage_dir, STAGE_FILE))
                               or {}, last_checkpoint(stage_dir)))
    resuming = any(p.done or p.ckpt for p in plans)
    if resume == "require" and not resuming:
        raise RecipeError(f"--resume: nothing to resume in {recipe.output_dir}: no finished stage ({STAGE_FILE}) "
                          f"and no complete checkpoint-* directory")
    problems = [f"stage '{p.spec.name}' in {p.dir} was trained with a different configuration (changed: "
                f"{', '.join(changed_keys(p.state.get('config', {}), p.config))}); run with --fresh to start over, "
                f"or choose another output_dir"
                for p in plans if (p.done or p.ckpt) and p.state.get("fingerprint") not in (None, p.fingerprint)]
    if problems:
        raise RecipeError(problems, source=recipe.path)
    return plans, resuming


def prepare_resume(p: StagePlan, log) -> None:
    """Make the stage directory ready to train: a fresh attempt clears what it would clash with; a resumed one
    rewinds the log to its checkpoint and removes checkpoints a kill cut short. Then marks it running."""
    if p.ckpt is None:
        clear_stage(p.dir, everything=False)
    else:
        moved = rewind_log(os.path.join(p.dir, "log.jsonl"), p.ckpt[0])
        for _, path, complete in checkpoints(p.dir):
            if not complete:
                shutil.rmtree(path, ignore_errors=True)
        log(f"stage '{p.spec.name}': resuming from {p.ckpt[1]} (step {p.ckpt[0]})"
            + (f"; {moved} log record(s) of discarded steps moved to log.discarded.jsonl" if moved else ""))
    os.makedirs(p.dir, exist_ok=True)
    write_json(os.path.join(p.dir, STAGE_FILE), {"status": "running", "fingerprint": p.fingerprint,
                                                 "config": p.config})


def mark_done(p: StagePlan, info: dict, eval_row: dict | None) -> None:
    write_json(os.path.join(p.dir, STAGE_FILE), {"status": "done", "fingerprint": p.fingerprint,
                                                 "config": p.config, "info": info, "eval": eval_row})
