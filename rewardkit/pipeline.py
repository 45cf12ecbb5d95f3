"""Runs a validated recipe: stages in order, each starting from the previous stage's model."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import time
import warnings

from rewardkit import models, plot
from rewardkit.data import load_data
from rewardkit.errors import RecipeError, RewardkitError
from rewardkit.registry import _import_target
from rewardkit.trainers.base import LogHistoryCallback, StageContext


def _log(msg: str) -> None:
    print(f"[rewardkit] {msg}", flush=True)


class _DataCache:
    def __init__(self, recipe, registry):
        self.recipe, self.registry, self._cache = recipe, registry, {}

    def get(self, data: dict, where: str):
        key = json.dumps(data, sort_keys=True, default=str)
        if key not in self._cache:
            self._cache[key] = load_data(self.recipe, data, self.registry, where)
        return self._cache[key]


def _require_split(dataset, split: str, where: str) -> None:
    if split not in dataset:
        hint = "data.params.n_val (built-in arithmetic)" if split == "validation" else "data.test_size or data.test_path"
        raise RecipeError(f"{where}: the dataset has no '{split}' split (has {', '.join(dataset)}); add {hint}")


def _evaluator(recipe, registry):
    if not recipe.eval:
        return None
    from rewardkit.evaluate import evaluate  # noqa: PLC0415

    block = recipe.eval["reward"]
    block = block if isinstance(block, dict) else {"name": block}
    fn = registry.build_reward(block["name"], block.get("params") or {}, alias="eval")
    split = recipe.eval.get("split", "test")

    def run(model, tokenizer, dataset, split=split, n=recipe.eval.get("n"), samples=recipe.eval.get("samples", 0),
            where="eval.split"):
        _require_split(dataset, split, where)
        return evaluate(model, tokenizer, dataset[split], fn, recipe.eval.get("max_new_tokens", 16),
                        recipe.eval.get("batch_size", 64), n, samples, recipe.eval.get("temperature", 1.0))

    return run


class _Dist:
    """The process's place under ``accelerate launch`` / torchrun (one process per device or CPU slot).

    Training is collective (TRL/transformers handle it); everything that writes rewardkit's own files, prints
    the summary or evaluates is done by the main process while the others wait at a barrier.
    """

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.main = self.rank == 0
        if self.world > 1:
            import torch  # noqa: PLC0415
            from accelerate import PartialState  # noqa: PLC0415

            cpu = not torch.cuda.is_available()
            if cpu:  # transformers then asks accelerate for CPU processes (gloo) instead of GPU ones
                os.environ.setdefault("ACCELERATE_USE_CPU", "true")
            PartialState(cpu=cpu)  # initialises the process group, so barriers work before any trainer exists

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist  # noqa: PLC0415

            if dist.is_available() and dist.is_initialized():
                dist.barrier()


# --------------------------------------------------------------------------- run state on disk (resume)
STAGE_FILE = "stage.json"  # {"status": "running" | "done", "fingerprint", "config", "info", "eval", ...}
_CKPT = re.compile(r"^checkpoint-(\d+)$")


def _read_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def _write_json(path: str, data) -> None:
    """Write atomically: a killed process leaves the old file or the new one, never half of one."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, default=str)
    os.replace(tmp, path)


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


def _stage_config(recipe, spec, previous: str | None) -> dict:
    """Everything that decides what a stage trains; a finished stage is reused only if this is unchanged."""
    return {"trainer": spec.trainer_type, "trainer_args": spec.trainer_args,
            "rewards": [dataclasses.asdict(b) for b in spec.rewards], "model": spec.model, "data": spec.data,
            "reward_faults": spec.reward_faults, "seed": recipe.seed, "after": previous,
            **({"early_stop": spec.early_stop, "eval": recipe.eval} if spec.early_stop else {})}


def _fingerprint(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _changed(old: dict, new: dict) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [k for k in keys if json.dumps(old.get(k), sort_keys=True, default=str)
            != json.dumps(new.get(k), sort_keys=True, default=str)]


def _eval_key(recipe, data: dict) -> str:
    """What a held-out score depends on besides the stage's model; a stored score is reused only if it matches."""
    return _fingerprint({"eval": recipe.eval, "data": data, "base": recipe.model, "seed": recipe.seed})


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


def _clear_stage(stage_dir: str, everything: bool) -> None:
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


def _early_stop(spec, evaluate, tokenizer, dataset, out_dir, ckpt, log):
    """The stage's held-out stopping callback (rewardkit.stopping), or None without ``early_stop:``."""
    if not spec.early_stop:
        return None
    from rewardkit import stopping  # noqa: PLC0415

    block, where = spec.early_stop, f"stages.{spec.name}.early_stop.split"
    split = block.get("split", "validation")
    _require_split(dataset, split, where)  # before training starts, not at the first evaluation

    def score(model):
        return evaluate(model, tokenizer, dataset, split=split, n=block.get("n"), samples=0, where=where)["score"]

    return stopping.callback(block, score, lambda msg: log(f"stage '{spec.name}' early_stop: {msg}"),
                             os.path.join(out_dir, "early_stop.json"), ckpt[0] if ckpt else None)


# --------------------------------------------------------------------------- the run
RESUME_MODES = ("auto", "require", "never")


def run(recipe, registry, resume: str = "auto") -> dict:
    """Train every stage; return (and write to ``output_dir/summary.json``) what happened.

    ``resume``: ``"auto"`` continues from what ``output_dir`` holds (finished stages are reused, an
    interrupted stage continues from its last complete checkpoint), ``"require"`` does the same but fails
    when there is nothing to continue, ``"never"`` removes this recipe's previous stage outputs first.
    """
    import datasets  # noqa: PLC0415
    import torch  # noqa: PLC0415
    from transformers import AutoTokenizer, set_seed  # noqa: PLC0415

    if resume not in RESUME_MODES:
        raise ValueError(f"resume must be one of {RESUME_MODES}, got {resume!r}")
    datasets.disable_progress_bars()  # keep the trainers' progress bars readable
    # transformers 5.x deprecation notices that TRL triggers on every stage; nothing a user can act on.
    warnings.filterwarnings("ignore", category=FutureWarning, message=".*checkpointing.*")
    dist = _Dist()
    log = _log if dist.main else (lambda msg: None)
    set_seed(recipe.seed)
    out = recipe.output_dir
    summary_path = os.path.join(out, "summary.json")
    if resume == "never" and dist.main:
        for spec in recipe.stages:
            _clear_stage(os.path.join(out, spec.name), everything=True)
        if os.path.exists(summary_path):
            os.remove(summary_path)
    dist.barrier()

    # What is on disk, checked against the recipe before anything loads.
    configs, previous_fp = [], None
    for spec in recipe.stages:
        config = _stage_config(recipe, spec, previous_fp)
        previous_fp = _fingerprint(config)
        configs.append((config, previous_fp))
    states = [_read_json(os.path.join(out, spec.name, STAGE_FILE)) or {} for spec in recipe.stages]
    ckpts = [last_checkpoint(os.path.join(out, spec.name)) for spec in recipe.stages]
    resuming = any(st.get("status") == "done" for st in states) or any(ckpts)
    if resume == "require" and not resuming:
        raise RecipeError(f"--resume: nothing to resume in {out}: no finished stage ({STAGE_FILE}) and no "
                          f"complete checkpoint-* directory")
    problems = []
    for spec, st, ckpt, (config, fp) in zip(recipe.stages, states, ckpts, configs):
        if (st.get("status") == "done" or ckpt) and st.get("fingerprint") not in (None, fp):
            problems.append(f"stage '{spec.name}' in {os.path.join(out, spec.name)} was trained with a "
                            f"different configuration (changed: {', '.join(_changed(st.get('config', {}), config))}"
                            f"); run with --fresh to start over, or choose another output_dir")
    if problems:
        raise RecipeError(problems)
    if dist.main:
        os.makedirs(out, exist_ok=True)

    data = _DataCache(recipe, registry)
    evaluate = _evaluator(recipe, registry)
    previous_summary = (_read_json(summary_path) or {}) if resuming else {}
    summary = {"recipe": recipe.path, "output_dir": out, "stages": [], "eval": [], "complete": False}
    start = time.time()

    def save_summary():
        if dist.main:
            _write_json(summary_path, summary)

    if dist.main:  # build an embedded model once, then let the other processes read it
        models.resolve(recipe.model["name"], registry, recipe)
    dist.barrier()
    model_path = models.resolve(recipe.model["name"], registry, recipe)
    if evaluate:
        key = _eval_key(recipe, recipe.data)
        old = [r for r in previous_summary.get("eval", []) if r.get("after") == "base" and r.get("key") == key]
        if old:
            summary["eval"].append(old[0])
            log(f"base model: held-out score {old[0]['score']:.1%} (from the previous run)")
        elif dist.main:
            tokenizer = AutoTokenizer.from_pretrained(model_path)
            base = models.load_for_inference(model_path, recipe.model)
            result = evaluate(base, tokenizer, data.get(recipe.data, "data"))
            del base
            summary["eval"].append({"after": "base", **result, "key": key})
            log(f"base model: held-out score {result['score']:.1%} on {result['n']} examples")
        dist.barrier()
        save_summary()

    previous = None
    trained_earlier = False  # once a stage trains in this run, what later stages hold on disk is stale
    for spec, st, ckpt, (config, fp) in zip(recipe.stages, states, ckpts, configs):
        out_dir = os.path.join(out, spec.name)
        if st.get("status") == "done" and not trained_earlier:
            info = st["info"]
            log(f"stage '{spec.name}': finished in a previous run ({info['steps']} steps), not trained again")
            summary["stages"].append({**info, "previous_run": True})
            if spec.name in previous_summary.get("health", {}):
                summary.setdefault("health", {})[spec.name] = previous_summary["health"][spec.name]
            policy = info.get("produces_policy", True)
            if evaluate and spec.evaluate and policy:
                key = _eval_key(recipe, spec.data)
                row = st.get("eval") if (st.get("eval") or {}).get("key") == key else None
                if row is None and dist.main:  # the eval section changed since: score the saved model
                    model = models.load_for_inference(info["model_dir"], spec.model)
                    tok = AutoTokenizer.from_pretrained(info["model_dir"])
                    row = {"after": spec.name, **evaluate(model, tok, data.get(spec.data, spec.name)), "key": key}
                    del model
                if row is not None:
                    summary["eval"].append(row)
                dist.barrier()
            previous = info["model_dir"] if policy else previous
            save_summary()
            continue

        stage_start = time.time()
        if trained_earlier:
            ckpt = None
        if dist.main:
            if ckpt is None:
                _clear_stage(out_dir, everything=False)
            else:
                moved = rewind_log(os.path.join(out_dir, "log.jsonl"), ckpt[0])
                for step, path, complete in checkpoints(out_dir):
                    if not complete:  # cut short by the kill
                        shutil.rmtree(path, ignore_errors=True)
                log(f"stage '{spec.name}': resuming from {ckpt[1]} (step {ckpt[0]})"
                    + (f"; {moved} log record(s) of discarded steps moved to log.discarded.jsonl" if moved else ""))
            os.makedirs(out_dir, exist_ok=True)
            _write_json(os.path.join(out_dir, STAGE_FILE), {"status": "running", "fingerprint": fp,
                                                            "config": config})
        dist.barrier()
        stage_model = previous or models.resolve(spec.model["name"], registry, recipe)
        log(f"stage '{spec.name}' ({spec.trainer_type}) from {stage_model}")
        tokenizer = AutoTokenizer.from_pretrained(stage_model)
        stage_cls = registry.load("trainers", spec.trainer_type)
        rewards = [registry.build_reward(b.name, b.params, b.alias, spec.reward_faults) for b in spec.rewards]
        log_cb = LogHistoryCallback(os.path.join(out_dir, "log.jsonl"))
        dataset = data.get(spec.data, f"stages.{spec.name}.data")
        callbacks = [log_cb.callback]
        stopper = _early_stop(spec, evaluate, tokenizer, dataset, out_dir, ckpt, log)
        if stopper:
            callbacks.append(stopper)
        ctx = StageContext(recipe, spec, registry, stage_model, tokenizer, dataset, out_dir, rewards, callbacks)
        trainer = stage_cls().build_trainer(ctx)
        trainer.train(resume_from_checkpoint=ckpt[1] if ckpt else None)
        trained_earlier = True
        _record_health(summary, spec.name, trainer, out_dir, save_summary)
        model_dir = os.path.join(out_dir, "model")
        if not spec.model.get("lora") or dist.main:  # save_model is collective; a LoRA merge is main's job
            model_dir = models.save_merged(trainer, stage_model, spec.model, model_dir,
                                           _import_target(stage_cls.model_class))
        info = {"name": spec.name, "trainer": spec.trainer_type, "model_dir": model_dir,
                "steps": trainer.state.global_step, "seconds": round(time.time() - stage_start, 1),
                **(getattr(trainer, "summary_metrics", None) or {})}
        # A stage whose result is not a policy (a reward model) is neither evaluated by generation nor the
        # starting point of the next stage.
        info["produces_policy"] = getattr(stage_cls, "produces_policy", True)
        if ckpt:
            info["resumed_from_step"] = ckpt[0]
        if stopper:
            info["early_stop"] = stopper.summary()
        faults = {r.__name__: r.fault_counts() for r in rewards
                  if hasattr(r, "fault_counts") and r.faults.policy == "skip"}
        if faults:
            info["reward_faults"] = faults  # this process's counts (the main process's share of the batch)
            for name, c in faults.items():
                log(f"reward '{name}': {c['skipped']} of {c['samples']} samples skipped (reward_faults: skip)")
        row = None
        if dist.main:
            png = plot.reward_curve(log_cb.path, os.path.join(out_dir, "reward_curve.png"))
            if png:
                info["reward_curve"] = png
            if evaluate and spec.evaluate and info["produces_policy"]:
                result = evaluate(trainer.model, ctx.tokenizer, ctx.dataset)
                row = {"after": spec.name, **result, "key": _eval_key(recipe, spec.data)}
                summary["eval"].append(row)
                log(f"after '{spec.name}': held-out score {result['score']:.1%}")
            _write_json(os.path.join(out_dir, STAGE_FILE), {"status": "done", "fingerprint": fp, "config": config,
                                                            "info": info, "eval": row})
        summary["stages"].append(info)
        save_summary()
        dist.barrier()
        previous = model_dir if info["produces_policy"] else previous
        del trainer
        torch.cuda.empty_cache() if torch.cuda.is_available() else None

    summary["seconds"] = round(time.time() - start, 1)
    summary["complete"] = True
    if dist.main:
        save_summary()
        try:
            summary["plots"] = {k: v for k, v in plot.plot_run(out).items() if v}
            save_summary()
        except RewardkitError as exc:  # no matplotlib: the run itself succeeded
            log(f"no plots: {exc}")
        print_summary(summary, recipe)
    dist.barrier()
    return summary


def _record_health(summary: dict, stage: str, trainer, out_dir: str, save_summary) -> None:
    """The health monitor's alarms into ``summary["health"]``; a stop on ``monitor.stop_on`` ends the run here,
    with the stage left resumable from the checkpoint the stop saved."""
    from rewardkit import monitor  # noqa: PLC0415

    health = getattr(trainer, "health_monitor", None)
    if health is None:
        return
    summary.setdefault("health", {})[stage] = health.report()
    if health.stopped:
        save_summary()
        raise monitor.HealthStop(monitor.stop_message(stage, health, out_dir))


def _health_lines(summary: dict) -> list[str]:
    from rewardkit.monitor import format_alarm  # noqa: PLC0415

    lines = []
    for stage, rep in (summary.get("health") or {}).items():
        off = [f"{a} ({how})" for a, how in rep["checks"].items() if how != "watched"]
        lines.append(f"  stage {stage}: {len(rep['alarms'])} alarm(s)"
                     + (f" (not watched: {', '.join(off)})" if off else ""))
        lines += [f"    {format_alarm(stage, a)}" for a in rep["alarms"]]
    return ["health (training monitor):", *lines] if lines else []


def print_summary(summary: dict, recipe) -> None:
    lines = ["", f"rewardkit: finished in {summary['seconds']:.0f}s"]
    if summary["eval"]:
        n = summary["eval"][0]["n"]
        sampled = "sampled_score" in summary["eval"][0]
        head = f"held-out score ({recipe.eval.get('split', 'test')}, {n} examples):  greedy"
        if sampled:
            row0 = summary["eval"][0]
            head += f"       sampled ({row0['samples']} per prompt, temperature {row0['temperature']})"
        lines.append(head)
        prev = None
        for row in summary["eval"]:
            line = f"  {row['after']:<12} {row['score']:6.1%}"
            line += f" ({(row['score'] - prev['score']) * 100:+5.1f})" if prev else " " * 8
            if sampled and "sampled_score" in row:
                line += f"    {row['sampled_score']:6.1%}"
                line += f" ({(row['sampled_score'] - prev['sampled_score']) * 100:+5.1f})" if prev else ""
            lines.append(line)
            prev = row
    for st in summary["stages"]:
        extra = f", reward curve {st['reward_curve']}" if st.get("reward_curve") else ""
        when = " (previous run)" if st.get("previous_run") else ""
        resumed = f" (resumed at step {st['resumed_from_step']})" if st.get("resumed_from_step") else ""
        lines.append(f"  stage {st['name']}: {st['steps']} steps in {st['seconds']:.0f}s{when}{resumed}{extra}")
        if (st.get("early_stop") or {}).get("stopped_at"):
            lines.append(f"    stopped early at step {st['early_stop']['stopped_at']}: {st['early_stop']['reason']}")
    lines += _health_lines(summary)
    if summary["stages"]:
        lines.append(f"model written to {summary['stages'][-1]['model_dir']}")
    if summary.get("plots"):
        lines.append(f"plots: {os.path.dirname(next(iter(summary['plots'].values())))}")
    lines.append(f"summary: {os.path.join(summary['output_dir'], 'summary.json')}")
    print("\n".join(lines), flush=True)
