"""The Stage contract: how a recipe's ``trainer`` section becomes a configured TRL trainer.

A stage class names its TRL config dataclass (checked field by field at validation time), the dataset
columns it needs and whether it takes reward blocks; ``build_trainer(ctx)`` returns an object with
``train()``, ``model``, ``state`` and ``processing_class`` (a TRL/transformers Trainer).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from typing import Any

from rewardkit import report
from rewardkit.registry import import_target

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


def _run_time_problems(args: dict, fields: dict) -> list[str]:
    """Settings TRL or transformers accept in the config but reject once the trainer is built (after the
    model has loaded), or that make a run meaningless. ``args`` are already type-checked; ``fields`` are the
    config's dataclass fields (for defaults)."""
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
    beta = args.get("beta", getattr(fields.get("beta"), "default", None))
    if args.get("sync_ref_model") and beta == 0:
        problems.append("sync_ref_model: true with beta: 0 has no reference model to sync (GRPOTrainer refuses "
                        "it); set beta > 0 or drop sync_ref_model")
    if args.get("sync_ref_model") and args.get("precompute_ref_log_probs"):
        problems.append("sync_ref_model: cannot be combined with precompute_ref_log_probs (DPOTrainer refuses it)")
    problems.extend(report.problems(args.get("report_to")))  # an unknown backend, a package not installed
    return problems


@dataclass
class StageContext:
    recipe: Any
    spec: Any  # rewardkit.recipe.StageSpec
    registry: Any
    model_path: str
    tokenizer: Any
    dataset: Any  # DatasetDict
    output_dir: str
    rewards: list = field(default_factory=list)  # built TRL reward functions, aligned with spec.rewards
    callbacks: list = field(default_factory=list)
    # report(metrics): rewardkit's own metrics to the trainer's report_to integrations (rewardkit.report.Reporter)
    report: Any = None


class Stage:
    """Base class of trainer stages: the whole contract the pipeline uses. Subclasses set the class attributes
    and implement ``build_trainer``; ``result_metrics`` and ``health_report`` report on the trained trainer."""

    config_class: str = ""  # "module:Class" of the TRL config dataclass
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

    def result_metrics(self, trainer) -> dict:
        """Metrics of the trained result for the stage's entry in ``summary.json`` (after ``train()``)."""
        return {}

    def health_report(self, trainer):
        """The stage's training health monitor (``rewardkit.monitor.HealthMonitor``), or None."""
        return None

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
        problems.extend(_run_time_problems(args, fields))
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
        args = dict(ctx.spec.trainer_args)
        args.setdefault("seed", ctx.recipe.seed)
        args = {**report.config_defaults({**self.defaults, **args}, ctx.spec.name, ctx.recipe.output_dir), **args}
        return self.make_config(args, ctx.output_dir, **extra)

    def build_trainer(self, ctx: StageContext):  # pragma: no cover - interface
        raise NotImplementedError


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
        from transformers import TrainerCallback  # noqa: PLC0415

        self.path = path
        os.makedirs(os.path.dirname(path), exist_ok=True)
        outer = self

        class _CB(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs and state.is_world_process_zero:
                    with open(outer.path, "a") as f:
                        f.write(json.dumps({"step": state.global_step, **logs}) + "\n")

        self.callback = _CB()
