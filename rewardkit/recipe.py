"""Recipes: YAML files that describe a run, validated completely before any model loads.

A recipe has a model, a dataset, one or more stages (each naming a trainer, its TRL config fields and, for
RL trainers, reward blocks ``{name, alias, weight, params}``), and an optional held-out evaluation. A
single-stage recipe may write ``trainer:``/``rewards:`` at the top level instead of ``stages:``. The full
format is documented in docs/recipes.md.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import os
import string
from dataclasses import dataclass
from typing import Any

from rewardkit import evaluate as _evaluate
from rewardkit import run_state, values
from rewardkit.errors import PluginError, RecipeError
from rewardkit.recipe_file import apply_overrides, load_yaml, not_a_file
from rewardkit.recipe_schema import (Data, EarlyStop, Eval, FaultPolicy, Model, Monitor, Quantization, Reward,
                                     RolloutLog, Stage, Top)
from rewardkit.registry import Registry, get_registry
from rewardkit.values import check_keys, check_section

# --------------------------------------------------------------------------- normalized recipe
@dataclass
class RewardBlock:
    name: str
    alias: str
    weight: float
    params: dict


@dataclass
class StageSpec:
    name: str
    trainer_type: str
    trainer_args: dict
    rewards: list[RewardBlock]
    model: dict
    data: dict
    evaluate: bool
    # rewardkit's own sections, declared in rewardkit.recipe_schema: the recipe's merged under the stage's
    reward_faults: FaultPolicy = dataclasses.field(default_factory=FaultPolicy)
    early_stop: EarlyStop | None = None
    monitor: Monitor = dataclasses.field(default_factory=Monitor)
    rollout_log: RolloutLog = dataclasses.field(default_factory=RolloutLog)
    # rewardkit.environments: a registered environment {name, params, max_output_chars}; plain "module:function" tools
    environment: dict | None = None
    tools: list = dataclasses.field(default_factory=list)


@dataclass
class Recipe:
    path: str | None
    base_dir: str
    output_dir: str
    seed: int
    model: dict
    data: dict
    stages: list[StageSpec]
    eval: Eval | None
    raw: dict

    def resolve_path(self, p: str) -> str:
        """Paths in a recipe are relative to the recipe file; fall back to the working directory."""
        if os.path.isabs(p):
            return p
        candidate = os.path.join(self.base_dir, p)
        return candidate if os.path.exists(candidate) or not os.path.exists(p) else p


def _merge(base: dict, over: dict | None) -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _model_keys(section: Any, where: str, problems: list[str]) -> dict:
    model = check_keys(Model, section, where, problems)
    if isinstance(model.get("quantization"), dict):
        model["quantization"] = check_keys(Quantization, model["quantization"], f"{where}.quantization", problems)
    return model


def _reward_blocks(blocks: list, where: str, problems: list[str]) -> list[RewardBlock]:
    rewards = []
    for i, block in enumerate(blocks):
        bw = f"{where}[{i}]"
        if isinstance(block, str):
            block = {"name": block}
        reward = check_section(Reward, block, bw, problems)
        if reward.name is not None:  # a bad key or value of the block is reported and left out
            rewards.append(RewardBlock(reward.name, reward.alias or reward.name, float(reward.weight),
                                       dict(reward.params)))
    return rewards


def normalize(raw: dict, path: str | None, problems: list[str]) -> Recipe:
    """Check the recipe's shape (not its meaning) against the declared sections (rewardkit.recipe_schema) and turn
    it into a :class:`Recipe`. Sections and values of the wrong type or range are reported and left out, so
    :func:`validate` only meets the declared types."""
    top = check_section(Top, raw, "recipe", problems)
    default_out = os.path.join("runs", os.path.splitext(os.path.basename(path))[0] if path else "run")
    output_dir = str(top.output_dir or default_out)
    raw_model = _required_section(top.model, raw, "model", "model: {name: tiny-llama}", problems)
    model = _model_keys(raw_model, "model", problems) if raw_model else {}
    raw_data = _required_section(top.data, raw, "data", "data: {name: arithmetic}", problems)
    data = check_keys(Data, raw_data, "data", problems) if raw_data else {}
    ev = None if top.eval is None else check_section(Eval, _with_output_dir(top.eval, output_dir), "eval", problems)
    stages_raw, multi = _stages_section(raw, top, problems)
    defaults = {"model": model, "data": data, "eval": ev,
                "reward_faults": check_section(FaultPolicy, top.reward_faults or {}, "reward_faults", problems),
                "monitor": check_section(Monitor, top.monitor or {}, "monitor", problems),
                "rollout_log": check_section(RolloutLog, top.rollout_log or {}, "rollout_log", problems)}
    stages = [spec for sname, sraw in stages_raw.items()
              if (spec := _stage_spec(str(sname), sraw, f"stages.{sname}." if multi else "", defaults, problems))]
    for stage in stages:  # a reward or dataset may read what an earlier stage wrote: "{output_dir}/rm/model"
        stage.data = _with_output_dir(stage.data, output_dir)
        for block in stage.rewards:
            block.params = _with_output_dir(block.params, output_dir)
    base_dir = os.path.dirname(os.path.abspath(path)) if path else os.getcwd()
    return Recipe(path, base_dir, output_dir, top.seed, model, data, stages, ev, raw)


def _required_section(value, raw: dict, key: str, example: str, problems: list[str]):
    if value is None and raw.get(key) is None:
        problems.append(f"{key}: missing (e.g. {example})")
    return value


def _stages_section(raw: dict, top: Top, problems: list[str]) -> tuple[dict, bool]:
    """The ``stages:`` mapping and whether the recipe wrote one; the single-stage shorthand (a top-level
    ``trainer:`` and ``rewards:``) becomes one stage named after its trainer, so there is one path from here on
    (its problems are located at ``trainer``/``rewards`` as the user wrote them)."""
    if "stages" in raw:
        if "trainer" in raw or "rewards" in raw:
            problems.append("recipe: use either stages: or a top-level trainer:/rewards:, not both")
            return {}, True
        if not top.stages:
            problems.append("stages: expected a non-empty mapping of stage name -> {trainer, rewards, ...}")
        return top.stages or {}, True
    if "trainer" not in raw:
        problems.append("recipe: no trainer; add trainer: {type: grpo, ...} or stages:")
        return {}, False
    trainer = top.trainer or {}
    name = str(trainer.get("type", "train"))
    return {name: {"trainer": trainer, **({"rewards": top.rewards} if top.rewards is not None else {})}}, False


def _stage_spec(name: str, sraw: Any, at: str, defaults: dict, problems: list[str]) -> "StageSpec | None":
    """One stage's section, checked, with the recipe-wide sections merged under its own (``at`` prefixes the
    locations of its problems: ``stages.<name>.``, or nothing for the shorthand)."""
    if not isinstance(sraw, dict):
        problems.append(f"{at.rstrip('.')}: expected a mapping with a trainer")
        return None
    stage = check_section(Stage, sraw, at.rstrip(".") or "recipe", problems)
    trainer = stage.trainer
    if not isinstance(trainer, dict) or "type" not in trainer:
        problems.append(f"{at}trainer: missing type (e.g. type: grpo)")
        trainer = {"type": None}
    elif not isinstance(trainer["type"], str):
        problems.append(f"{at}trainer.type: expected a trainer name, got {type(trainer['type']).__name__}")
        trainer = {**trainer, "type": None}
    args = {k: v for k, v in trainer.items() if k != "type"}
    smodel = _model_keys(stage.model, f"{at}model", problems) if stage.model else {}
    sdata = check_keys(Data, stage.data, f"{at}data", problems) if stage.data else {}
    early = check_section(EarlyStop, stage.early_stop, f"{at}early_stop", problems) if stage.early_stop else None
    return StageSpec(name, trainer.get("type"), args, _reward_blocks(stage.rewards or [], f"{at}rewards", problems),
                     _merge(defaults["model"], smodel), _merge(defaults["data"], sdata), stage.eval,
                     reward_faults=_override(FaultPolicy, defaults, stage.reward_faults, f"{at}reward_faults",
                                             problems),
                     early_stop=early, monitor=_override(Monitor, defaults, stage.monitor, f"{at}monitor", problems),
                     rollout_log=_override(RolloutLog, defaults, stage.rollout_log, f"{at}rollout_log", problems),
                     environment=stage.environment, tools=stage.tools or [])


def _override(cls, defaults: dict, section: dict | None, where: str, problems: list[str]):
    """A stage's section: the recipe's (``defaults``) with the keys the stage gives."""
    base = defaults[{FaultPolicy: "reward_faults", Monitor: "monitor", RolloutLog: "rollout_log"}[cls]]
    return base if not section else check_section(cls, section, where, problems, base=base)


def _with_output_dir(value: Any, output_dir: str) -> Any:
    """Replace the literal ``{output_dir}`` in every string of ``value`` (other braces are left alone)."""
    if isinstance(value, str):
        return value.replace("{output_dir}", output_dir)
    if isinstance(value, dict):
        return {k: _with_output_dir(v, output_dir) for k, v in value.items()}
    if isinstance(value, list):
        return [_with_output_dir(v, output_dir) for v in value]
    return value


# --------------------------------------------------------------------------- semantic validation
def _declared_splits_problem(loader, data: dict, where: str, provider: str) -> list[str]:
    """A dataset's ``splits(**params)`` declaration (hookspecs) may refuse its params the way the loader would
    (a ValueError naming the parameter): reported here, before anything is built or loaded."""
    declared = getattr(loader, "splits", None)
    if not callable(declared):
        return []
    try:
        declared(**(data.get("params") or {}))
    except (ValueError, TypeError) as exc:
        return [f"{where}.params: dataset '{data['name']}' from {provider}: {exc}"]
    except Exception as exc:  # noqa: BLE001 - a plugin's bug, named, not a traceback
        return [f"{where}.params: dataset '{data['name']}' from {provider}: its splits declaration failed: "
                f"{type(exc).__name__}: {exc}"]
    return []


def _dataset_columns(recipe: Recipe, data: dict, where: str, registry: Registry, problems: list[str]):
    """Columns the dataset will have after rename/templates, or None when unknown (hub datasets)."""
    from rewardkit.data import file_columns  # noqa: PLC0415

    sources = [k for k in ("name", "path", "hub") if data.get(k)]
    if len(sources) != 1:
        problems.append(f"{where}: give exactly one of name, path or hub" + (f" (got {', '.join(sources)})"
                                                                           if sources else ""))
        return None
    cols: list[str] | None
    if data.get("name"):
        try:
            comp = registry.get("datasets", data["name"])
        except PluginError as exc:
            problems.append(f"{where}.name: {exc}")
            return None
        cols = list(comp.columns) if comp.columns else None
        loader = comp.load()
        import inspect  # noqa: PLC0415

        try:
            inspect.signature(loader).bind(**(data.get("params") or {}))
        except TypeError as exc:
            problems.append(f"{where}.params: dataset '{data['name']}' from {comp.provider}: {exc}")
        else:
            problems.extend(_declared_splits_problem(loader, data, where, comp.provider))
    elif data.get("path"):
        cols = None
        for key in ("path", "test_path"):
            if data.get(key):
                p = recipe.resolve_path(data[key])
                if not os.path.exists(p):
                    problems.append(f"{where}.{key}: file not found: {p}")
                    continue
                why = not_a_file(p)  # a FIFO would block the read below
                if why:
                    problems.append(f"{where}.{key}: {why}")
                    continue
                try:
                    found = file_columns(p)
                except ValueError as exc:
                    problems.append(f"{where}.{key}: {exc}")
                    continue
                except Exception as exc:  # noqa: BLE001 - csv/pyarrow/OS errors: the file is the problem
                    problems.append(f"{where}.{key}: cannot read {p}: {type(exc).__name__}: {exc}")
                    continue
                cols = found if cols is None else [c for c in cols if c in found]
                if key == "path" and (bad := _test_size_problem(p, data, where)):
                    problems.append(bad)
    else:
        return None
    if cols is None:
        return None
    for old, new in (data.get("rename") or {}).items():
        if old not in cols:
            problems.append(f"{where}.rename: column '{old}' not in dataset (columns: {', '.join(cols)})")
        else:
            cols[cols.index(old)] = new
    for key, col in (("prompt_template", "prompt"), ("completion_template", "completion")):
        tmpl = data.get(key)
        if isinstance(tmpl, str):
            try:
                fields = [f for _, f, _, _ in string.Formatter().parse(tmpl) if f]
            except ValueError as exc:
                problems.append(f"{where}.{key}: {exc}")
                continue
            for f in fields:
                if f not in cols:
                    problems.append(f"{where}.{key}: field '{{{f}}}' is not a dataset column "
                                    f"(columns: {', '.join(cols)})")
            if col not in cols:
                cols.append(col)
    return cols


def _test_size_problem(path: str, data: dict, where: str) -> str | None:
    """A ``test_size`` count that leaves no training rows of the file ``path`` (the run's split would fail)."""
    size = data.get("test_size")
    if data.get("test_path") or not isinstance(size, int):
        return None
    rows = _file_rows(path)
    if rows is not None and size >= rows:
        return (f"{where}.test_size: {size} rows held out of {path}, which has {rows}; hold out fewer (or a "
                f"fraction, e.g. 0.1)")
    return None


def _file_rows(path: str) -> int | None:
    """Rows of a local data file, counted without loading it as a dataset (None where that cannot be done)."""
    import json  # noqa: PLC0415

    ext = os.path.splitext(path)[1].lower()
    try:
        if ext == ".jsonl":
            with open(path) as f:
                return sum(1 for line in f if line.strip())
        if ext == ".parquet":
            import pyarrow.parquet as pq  # noqa: PLC0415

            return pq.read_metadata(path).num_rows
        if ext == ".csv":
            import csv  # noqa: PLC0415

            with open(path, newline="") as f:
                return max(0, sum(1 for _ in csv.reader(f)) - 1)
        with open(path) as f:
            rows = json.load(f)
        return len(rows) if isinstance(rows, list) else len(next(iter(rows.values()), []))
    except Exception:  # noqa: BLE001 - an unreadable file is reported by the column check
        return None


def _check_model(recipe: Recipe, model: dict, where: str, registry: Registry, problems: list[str]) -> None:
    name = model.get("name")
    if not name:
        problems.append(f"{where}.name: missing")
    elif name not in registry.names("models") and not os.path.isdir(recipe.resolve_path(name)):
        if name.count("/") != 1 or name.startswith((".", "/")):
            problems.append(f"{where}.name: '{name}' is not a registered model, a local directory, or a hub id "
                            f"(org/name); {registry.unknown_message('models', name)}")
    elif name in registry.names("models"):  # built on first use into the cache: a path the run writes to
        from rewardkit import models  # noqa: PLC0415

        bad = None if os.path.isdir(path := models.cached_path(name, registry)) else \
            run_state.dir_problem(os.path.dirname(path))
        if bad:
            problems.append(f"{where}.name: '{name}' is built into the model cache ($REWARDKIT_CACHE, "
                            f"{models.cache_dir()}), which cannot be written: {bad}")
    lora = model.get("lora")  # its keys and types are peft's LoraConfig's
    if isinstance(lora, dict):
        from peft import LoraConfig  # noqa: PLC0415

        fields = {f.name for f in dataclasses.fields(LoraConfig)}
        types = values.dataclass_types(LoraConfig)
        for k, v in lora.items():
            if k not in fields:
                close = difflib.get_close_matches(str(k), fields, n=1)
                problems.append(f"{where}.lora.{k}: not a peft LoraConfig field"
                                + (f" (did you mean '{close[0]}'?)" if close else ""))
            elif k in types and values.problem(v, *types[k]):
                problems.append(f"{where}.lora.{k}: {values.problem(v, *types[k])}")


def validate(recipe: Recipe, registry: Registry | None = None, problems: list[str] | None = None,
             build_undeclared: bool = False) -> list[str]:
    """Check everything that can be checked without loading a model. Returns the list of problems.

    ``build_undeclared`` (``rewardkit validate``): a registered dataset whose loader does not declare its splits
    is built to learn them, so the splits the run reads are checked there too (a run checks them as it loads the
    data, before it writes anything)."""
    registry = registry or get_registry()
    problems = [] if problems is None else problems
    problems.extend(f"plugins: {c}" for c in registry.conflicts())
    problems.extend(run_state.output_problems(recipe))
    multi = "stages" in recipe.raw
    _check_model(recipe, recipe.model, "model", registry, problems)
    base_cols = _dataset_columns(recipe, recipe.data, "data", registry, problems) if recipe.data else None
    eval_split = recipe.eval.split if recipe.eval else None
    # (data, split, where): the splits the run reads, checked when a dataset's splits are known without loading it
    reads = [(recipe.data, eval_split, "eval.split")] if recipe.eval and recipe.data else []
    scored: list = []  # (columns, stage): a stage's own data the eval reward scores (after it, or for early_stop)

    for stage in recipe.stages:
        where = f"stages.{stage.name}" if multi else ""
        tw = f"{where}.trainer" if multi else "trainer"
        rw = f"{where}.rewards" if multi else "rewards"
        if stage.model != recipe.model:
            _check_model(recipe, stage.model, f"{where}.model", registry, problems)
        cols = (_dataset_columns(recipe, stage.data, f"{where}.data", registry, problems)
                if stage.data != recipe.data else base_cols)
        stage_cls = None
        if stage.trainer_type is not None:
            try:
                stage_cls = registry.load("trainers", stage.trainer_type)
            except PluginError as exc:
                problems.append(f"{tw}.type: {exc}")
        if stage_cls is not None:  # the trainer's own rules (rewardkit.Stage.check_stage), located from the stage
            from rewardkit.trainers.base import stage_problems  # noqa: PLC0415

            problems.extend(f"{where + '.' if multi else ''}{p}"
                            for p in stage_problems(stage_cls, stage, cols, registry))
            if recipe.eval and stage.evaluate and stage_cls.produces_policy and stage.data != recipe.data:
                reads.append((stage.data, eval_split, f"eval.split (after stage {stage.name})"))
                scored.append((cols, stage.name))
        from rewardkit import environments  # noqa: PLC0415 - tools and environments (docs/environments.md)

        problems.extend(environments.stage_problems(stage, registry, f"{where}." if multi else "",
                                                    environments.model_dir(stage.model.get("name"), registry, recipe)))
        reads.append((stage.data, "train", f"{where + '.' if multi else ''}data"))
        if stage.early_stop and stage.data != recipe.data:
            scored.append((cols, stage.name))
        if stage.early_stop:
            ew = f"{where + '.' if multi else ''}early_stop"
            reads.append((stage.data, stage.early_stop.split, f"{ew}.split"))
            from rewardkit import stopping  # noqa: PLC0415

            problems.extend(stopping.check(stage.early_stop, recipe.eval, ew, stage.trainer_args.get("max_steps"),
                                           registry))
        aliases: dict[str, int] = {}
        for i, block in enumerate(stage.rewards):
            bw = f"{rw}[{i}]"
            if block.alias in aliases:
                problems.append(f"{bw}: name '{block.alias}' already used by {rw}[{aliases[block.alias]}]; "
                                f"give one an alias")
            aliases[block.alias] = i
            problems.extend(_reward_problems(registry, block.name, block.params, bw, cols))
    from rewardkit.data import missing_split  # noqa: PLC0415

    problems.extend(p for data, split, w in reads if (p := missing_split(data, split, w, registry)))
    if build_undeclared:
        problems.extend(_built_split_problems(recipe, reads, registry))
    if recipe.eval and recipe.eval.reward and recipe.eval.reward.name:  # missing: reported by normalize
        problems.extend(_reward_problems(registry, recipe.eval.reward.name, recipe.eval.reward.params, "eval.reward",
                                         base_cols))
        problems.extend(_evaluate.check_threshold(recipe.eval, registry))
        problems.extend(p for cols, name in scored if (p := _eval_columns(registry, recipe.eval.reward, cols, name)))
    return problems


def _declares_splits(data: dict, registry: Registry) -> bool:
    try:
        return callable(getattr(registry.load("datasets", data["name"]), "splits", None))
    except PluginError:
        return True  # an unknown dataset: reported by its name's check, nothing to build


def _built_split_problems(recipe: Recipe, reads: list, registry: Registry) -> list[str]:
    """The split reads of registered datasets without a ``splits`` declaration, checked by calling each loader once
    (its splits only: rename, templates and columns are the section checks' business)."""
    import inspect  # noqa: PLC0415

    from rewardkit.data import split_problem  # noqa: PLC0415

    built: dict[str, list[str] | None] = {}
    out: list[str] = []
    for data, split, where in reads:
        if not data.get("name") or _declares_splits(data, registry):
            continue  # known without building, or declared and refusing its params (_declared_splits_problem)
        key = json.dumps(data, sort_keys=True, default=str)
        if key not in built:
            section = "data" if data == recipe.data else next(
                f"stages.{st.name}.data" for st in recipe.stages if st.data == data)
            loader, params = registry.load("datasets", data["name"]), data.get("params") or {}
            built[key] = None
            try:
                inspect.signature(loader).bind(**params)
            except TypeError:
                continue  # reported by the section's check
            try:
                names = list(loader(**params))
            except Exception as exc:  # noqa: BLE001 - a third-party loader's failure, named, not a traceback
                out.append(f"{section}: dataset '{data['name']}' could not be built: {type(exc).__name__}: {exc}")
                continue
            built[key] = ["train", "test"] if "test" not in names and data.get("test_size") else names
        if built[key] is not None and (p := split_problem(built[key], split, where)):
            out.append(p)
    return out


def _eval_columns(registry, reward, cols, stage: str) -> str | None:
    """Why the eval reward cannot score a stage's own data (a column it reads is not there), or None."""
    try:
        missing = [str(c) for c in registry.reward_columns(reward.name, reward.params) if c not in cols] \
            if cols is not None else []
    except PluginError:
        return None  # reported at eval.reward
    return (f"eval.reward: reward '{reward.name}' scores stage {stage}'s data, which lacks column(s) "
            f"{', '.join(missing)} (its columns are {', '.join(cols)})") if missing else None


def _reward_problems(registry, name, params, where, cols) -> list[str]:
    if not isinstance(params, dict):
        return [f"{where}.params: expected a mapping"]
    try:
        registry.get("rewards", name)
        found = registry.reward_problems(name, params) or _reward_param_types(registry, name, params, where)
        if found:
            return [p if p.startswith(where) else f"{where}: {p}" for p in found]
        needed = registry.reward_columns(name, params)
    except PluginError as exc:
        return [f"{where}.name: {exc}"]
    if cols is not None:
        missing = [str(c) for c in needed if c not in cols]
        if missing:
            return [f"{where}: reward '{name}' needs column(s) {', '.join(missing)}; dataset columns are "
                    f"{', '.join(cols)}"]
    return []


def _reward_param_types(registry, name, params, where) -> list[str]:
    """Each param against the type its factory's signature declares (unannotated params pass), then the
    factory's own ``check_params(**params)`` when it has one (the checks its constructor would make at run
    time, after the model has loaded)."""
    factory = registry.load("rewards", name)
    types = values.signature_types(factory)
    found = []
    for key, value in params.items():
        bad = values.problem(value, types[key]) if key in types else None
        if bad:
            found.append(f"{where}.params.{key}: {bad}")
    check = getattr(factory, "check_params", None)
    if not found and callable(check):
        try:
            found = [f"{where}.params: {p}" for p in check(**params) or []]
        except Exception as exc:  # noqa: BLE001 - a broken checker is reported, not raised
            comp = registry.get("rewards", name)
            found = [f"{where}.params: reward '{name}' from {comp.provider}: check_params raised "
                     f"{type(exc).__name__}: {exc}"]
    return found


def load_recipe(path: str, overrides: list[str] | None = None, registry: Registry | None = None,
                build_undeclared: bool = False) -> Recipe:
    """Load, override, normalize and validate; raise RecipeError listing every problem."""
    raw = apply_overrides(load_yaml(path), overrides or [], source=path)
    problems: list[str] = []
    recipe = normalize(raw, path, problems)
    validate(recipe, registry, problems, build_undeclared)
    if problems:
        raise RecipeError(problems, source=path)
    return recipe
