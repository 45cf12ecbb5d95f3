"""The Stage contract (public as ``rewardkit.Stage`` and ``rewardkit.StageContext``): how a recipe's ``trainer``
section becomes a configured trainer, and what the pipeline does around it.

A **stage class** is registered by name through the ``register_trainers`` hook (the name is what a recipe writes as
``trainer.type``). It declares, as class attributes:

- ``config_class``: ``"module:Class"`` of the config dataclass (a TRL config, or any ``TrainingArguments``
  subclass); the recipe's ``trainer`` section is checked against its fields at validation time.
- ``column_layouts``: the dataset columns its trainer consumes, one tuple per acceptable layout.
- ``takes_rewards``: whether the stage needs reward blocks (built, checked reward functions reach it in
  ``ctx.rewards``, in the order of ``spec.rewards``) or refuses them.
- ``produces_policy`` (default true): false for a result that is not a policy (a reward model): it is then not
  evaluated by generation and the next stage starts from the previous policy.
- ``model_class``: ``"module:Class"`` with ``from_pretrained(path)``, used to reload the result (LoRA merge).
- ``defaults``: config values rewardkit chooses over the config class's own (a recipe can override each).
- ``rollout_metrics``: its trainer logs GRPO-style rollout metrics under TRL's names (``reward``,
  ``rewards/<alias>/mean``, ``kl``, ``entropy``, ``completions/mean_length``, ``frac_reward_zero_std``); the
  pipeline then attaches the training health monitor (``rewardkit.monitor``, the recipe's ``monitor:`` section).
- ``rollout_groups``: its trainer writes the groups it generates to ``trainer.rollout_log`` when that is not
  ``None`` (``rollout_log.write(trainer, rows, out, rewards, row_ids)``, see ``rewardkit.rollout_log``); the
  pipeline then gives it the stage's rollout log before training (``<stage>/rollouts.jsonl``).

It implements ``build_trainer(ctx)``, which returns a ``transformers.Trainer`` (anything with ``train()``,
``model``, ``args``, ``state``, ``processing_class`` and ``add_callback``), built from ``ctx`` alone and given
``ctx.callbacks``. Optional hooks, each with a default here: ``check_args(args, registry)`` and
``check_stage(spec, columns, registry)`` (validation, before any model loads), ``result_metrics(trainer)`` (after
``train()``, into ``summary.json``), ``health_report(trainer)`` and ``summary_lines(info)`` (the printed summary).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from rewardkit import report
from rewardkit.registry import import_target

if TYPE_CHECKING:  # typing only: importing rewardkit stays free of torch, transformers and datasets
    from datasets import DatasetDict
    from transformers import PreTrainedTokenizerBase, Trainer, TrainerCallback

    from rewardkit.monitor import HealthMonitor
    from rewardkit.recipe import Recipe, StageSpec
    from rewardkit.registry import Registry
    from rewardkit.report import Reporter

# Set by rewardkit from other recipe sections; a trainer section that sets them is rejected with a pointer.
RESERVED = {
    "output_dir": "set output_dir at the top of the recipe",
    "model_init_kwargs": "use the model: section (dtype, attn_implementation, quantization, lora)",
    "reward_weights": "give each reward block a weight",
}


# Counts that must be at least 1 (0 divides by zero in TRL's batch arithmetic or makes an empty batch).
POSITIVE = ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
            "num_generations", "steps_per_generation", "generation_batch_size", "num_iterations",
            "max_completion_length")


def _run_time_problems(args: dict) -> list[str]:
    """Settings transformers accepts in any trainer's config but rejects once the trainer is built (after the
    model has loaded), or that make a run meaningless. ``args`` are already type-checked. Rules of one trainer
    live in its stage's ``check_args``."""
    problems = [f"{k}: must be at least 1, got {args[k]}" for k in POSITIVE
                if isinstance(args.get(k), int) and args[k] < 1]
    strategy = args.get("eval_strategy", "no")
    if strategy not in ("no", None):
        problems.append(f"eval_strategy: {strategy!r} needs an eval_dataset, and rewardkit gives the TRL trainer "
                        "none (transformers refuses to build it); held-out evaluation is the recipe's eval: "
                        "section. Remove eval_strategy or set it to no")
    lr = args.get("learning_rate")
    if isinstance(lr, (int, float)) and lr < 0:
        problems.append(f"learning_rate: must not be negative, got {lr}")
    problems.extend(report.problems(args.get("report_to")))  # an unknown backend, a package not installed
    return problems


RewardFunction = Callable[..., "list[float | None]"]  # TRL's fn(prompts, completions, **columns)


@dataclass
class StageContext:
    """Everything a stage's trainer is built from (``Stage.build_trainer(ctx)``), resolved by the pipeline."""

    recipe: Recipe  # the whole validated recipe (seed, output_dir, eval section)
    spec: StageSpec  # this stage: name, trainer_type, trainer_args, rewards, model, data, monitor, rollout_log
    registry: Registry  # the run's registry, for plugin components the stage needs (ctx.registry.kl_estimator(...))
    model_path: str  # the model to start from: the previous stage's result or the recipe's model
    tokenizer: PreTrainedTokenizerBase
    dataset: DatasetDict  # the stage's data: "train" and, when the dataset has them, "test"/"validation"
    output_dir: str  # <output_dir>/<stage>: checkpoints, log.jsonl, the trainer's files
    rewards: list[RewardFunction] = field(default_factory=list)  # built, checked; aligned with spec.rewards
    callbacks: list[TrainerCallback] = field(default_factory=list)  # give them all to the trainer
    # report(metrics): rewardkit's own metrics to the trainer's report_to integrations
    report: Reporter | None = None


class Stage:
    """Base class of trainer stages: the whole contract the pipeline uses (module docstring). Subclasses set the
    class attributes and implement ``build_trainer``; every other method is an optional hook with a default."""

    config_class: str = ""  # "module:Class" of the config dataclass
    model_class: str = "transformers:AutoModelForCausalLM"  # how a stage's result is reloaded
    takes_rewards: bool = False
    # Dataset layouts the trainer accepts: each entry is one acceptable set of columns.
    column_layouts: tuple[tuple[str, ...], ...] = ()
    # Defaults we choose over TRL's (the recipe can override each). Checkpoints every 500 steps (and at the
    # end), two kept, so a killed run resumes (docs/operations.md).
    defaults: dict = {"report_to": "none", "save_strategy": "steps", "save_steps": 500, "save_total_limit": 2,
                      "logging_steps": 10}
    # False when the result is not a policy (a reward model): it is then neither evaluated by generation nor the
    # model the next stage starts from.
    produces_policy: bool = True
    rollout_metrics: bool = False  # the trainer logs TRL's rollout metric names: the health monitor is attached
    rollout_groups: bool = False  # the trainer writes its groups to trainer.rollout_log: a rollout log is given

    def build_trainer(self, ctx: StageContext) -> Trainer:  # pragma: no cover - interface
        raise NotImplementedError(f"{type(self).__name__} does not implement build_trainer(ctx)")

    def result_metrics(self, trainer: Trainer) -> dict:
        """Metrics of the trained result for the stage's entry in ``summary.json`` (after ``train()``)."""
        return {}

    def health_report(self, trainer: Trainer) -> HealthMonitor | None:
        """A health monitor of the stage's own (``rewardkit.monitor.HealthMonitor``) whose alarms go into
        ``summary.json``; None (the default) keeps the one the pipeline attached to a ``rollout_metrics`` stage."""
        return None

    @classmethod
    def summary_lines(cls, info: dict) -> list[str]:
        """Extra lines under the stage's line in the printed summary, from its ``summary.json`` entry ``info``
        (what ``result_metrics`` added is in it; so is a previous run's entry of a reused stage)."""
        return []

    @classmethod
    def check_stage(cls, spec: StageSpec, columns: list[str] | None, registry: Registry) -> list[str]:
        """Problems with a whole recipe stage, each located from the stage (``trainer.<key>: ...``,
        ``rewards: ...``, ``data: ...``): its trainer section (``check_args``), reward blocks present or
        absent as ``takes_rewards`` says, the dataset's ``columns`` (None when unknown before loading) against
        ``column_layouts``. A stage with rules across sections (trainer keys against the model section) adds
        them after ``super()``'s."""
        name = spec.trainer_type
        problems = [f"trainer.{p}" for p in cls.check_args(spec.trainer_args, registry)]
        if cls.takes_rewards and not spec.rewards:
            problems.append(f"rewards: trainer '{name}' needs at least one reward block")
        if not cls.takes_rewards and spec.rewards:
            problems.append(f"rewards: trainer '{name}' does not take rewards")
        missing = cls.missing_columns(columns) if columns is not None else None
        if missing:
            problems.append(f"data: trainer '{name}' needs {missing}; dataset columns are {', '.join(columns)}")
        return problems


    @classmethod
    def config_cls(cls):
        return import_target(cls.config_class)

    @classmethod
    def fields(cls) -> dict[str, dataclasses.Field]:
        return {f.name: f for f in dataclasses.fields(cls.config_cls()) if f.init}

    @classmethod
    def check_args(cls, args: dict, registry) -> list[str]:
        """Problems with a trainer section: unknown or reserved keys, values of the wrong type (a string or NaN
        learning rate), settings that would only fail once the model has loaded, names that ``registry`` (the one
        the recipe is validated against) does not hold, then the config's own checks."""
        from rewardkit import values  # noqa: PLC0415

        fields = cls.fields()
        types = values.dataclass_types(cls.config_cls())
        problems = []
        for key, value in args.items():
            if key in RESERVED:
                problems.append(f"{key}: set by rewardkit; {RESERVED[key]}")
            elif key not in fields:
                close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.7)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                problems.append(f"{key}: not a field of {cls.config_cls().__name__}{hint}")
            elif key in types:
                bad = values.problem(value, *types[key])
                if bad:
                    problems.append(f"{key}: {bad}")
        if problems:
            return problems
        problems.extend(_run_time_problems(args))
        if "kl_estimator" in fields:  # any trainer that takes its KL estimator by name from the registry
            name = args.get("kl_estimator", fields["kl_estimator"].default)
            if name not in registry.names("kl_estimators"):
                problems.append(f"kl_estimator: {registry.unknown_message('kl_estimators', name)}")
        if problems:
            return problems
        import torch  # noqa: PLC0415

        if not torch.cuda.is_available():  # a GPU recipe still validates on a CPU machine
            args = {k: v for k, v in args.items() if k not in ("bf16", "fp16", "tf32")}
        try:
            cls.make_config(args, tempfile.gettempdir())
        except Exception as exc:  # noqa: BLE001 - whatever the config's __post_init__ raises is about these values
            detail = str(exc) if isinstance(exc, (ValueError, TypeError)) else f"{type(exc).__name__}: {exc}"
            problems.append(f"{cls.config_cls().__name__} rejects these values: {detail}")
        return problems

    @classmethod
    def make_config(cls, args: dict, output_dir: str, **extra):
        """``config_class`` built from ``defaults``, the CPU defaults, ``extra`` and ``args`` (later wins)."""
        kwargs = {**cls.defaults, **cls.platform_defaults(), **extra, **args}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return cls.config_cls()(output_dir=output_dir, **kwargs)

    @staticmethod
    def platform_defaults() -> dict:
        """On CPU, TRL's GPU-minded defaults make every step several times slower: bf16 autocast and gradient
        checkpointing (both on by default in TRL 1.16's configs). Off there, as is pinned memory; a recipe can
        still turn them on. Several CPU processes talk over gloo."""
        import torch  # noqa: PLC0415

        if torch.cuda.is_available():
            return {}
        cpu = {"bf16": False, "gradient_checkpointing": False, "dataloader_pin_memory": False}
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # several CPU processes: gloo, also under DeepSpeed (whose
            cpu["ddp_backend"] = "gloo"  # accelerate state otherwise finds no backend and counts one process)
        return cpu

    @classmethod
    def missing_columns(cls, columns: list[str]) -> str | None:
        if not cls.column_layouts or any(all(c in columns for c in lay) for lay in cls.column_layouts):
            return None
        return " or ".join("(" + ", ".join(lay) + ")" for lay in cls.column_layouts)

    def config(self, ctx: StageContext, **extra):
        """The stage's config object: the recipe's trainer section over ``defaults`` (seed from the recipe,
        ``output_dir`` the stage's folder), plus ``extra`` keywords the stage sets itself (``reward_weights``)."""
        args = dict(ctx.spec.trainer_args)
        args.setdefault("seed", ctx.recipe.seed)
        args = {**report.config_defaults({**self.defaults, **args}, ctx.spec.name, ctx.recipe.output_dir), **args}
        return self.make_config(args, ctx.output_dir, **extra)


def stage_problems(stage_cls: Any, spec: StageSpec, columns: list[str] | None, registry: Registry) -> list[str]:
    """``stage_cls.check_stage`` for recipe validation: a registered class that is not a ``Stage``, or a check hook
    that raises, is one problem naming the trainer, never a traceback."""
    name = spec.trainer_type
    if not (isinstance(stage_cls, type) and issubclass(stage_cls, Stage)):
        return [f"trainer.type: trainer '{name}' is registered as {stage_cls!r}, not a subclass of rewardkit.Stage"]
    try:
        return list(stage_cls.check_stage(spec, columns, registry))
    except Exception as exc:  # noqa: BLE001 - a plugin's broken checker is reported, not raised
        return [f"trainer.type: trainer '{name}' ({stage_cls.__module__}.{stage_cls.__qualname__}) failed to check "
                f"the stage: {type(exc).__name__}: {exc}"]


def over_processes(accelerator, values: list[float], op: str = "sum") -> list[float]:
    """``values`` (one float each) summed, or their min or max, over every process of ``accelerator``."""
    if accelerator.num_processes == 1:
        return list(values)
    import torch  # noqa: PLC0415

    g = accelerator.gather(torch.tensor(values, device=accelerator.device, dtype=torch.float64).unsqueeze(0))
    return {"sum": g.sum(0), "min": g.min(0).values, "max": g.max(0).values}[op].tolist()


class HeldOutMetrics:
    """Mixin for a TRL trainer whose result is judged on pairs it never trained on: after ``train()`` it calls
    ``heldout_metrics()`` on ``self.heldout`` (when given) and keeps the result in ``summary_metrics``, which
    its stage's ``result_metrics`` reports into ``summary.json``."""

    def __init__(self, *args, heldout=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.heldout = heldout
        self.summary_metrics: dict = {}

    def heldout_metrics(self) -> dict:  # pragma: no cover - interface
        raise NotImplementedError

    def train(self, *args, **kwargs):
        result = super().train(*args, **kwargs)
        if self.heldout is not None and len(self.heldout):
            self.summary_metrics = self.heldout_metrics()
            self.log(dict(self.summary_metrics))
        return result


class LogHistoryCallback:
    """Appends every log record to ``<output_dir>/log.jsonl`` as it happens (survives crashes)."""

    def __init__(self, path: str):
        from rewardkit.callbacks import LogRecords  # noqa: PLC0415 - transformers, only when training

        self.path = path
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self.callback = LogRecords(path)
