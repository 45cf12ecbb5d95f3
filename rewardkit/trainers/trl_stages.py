"""Stages backed directly by TRL trainers: our layer adds nothing TRL already does.

The model is handed to TRL as a path plus ``model_init_kwargs``, ``quantization_config`` and ``peft_config``,
so TRL builds the policy and (when needed) the reference exactly as it would for a TRL user.
"""

from __future__ import annotations

from rewardkit import models
from rewardkit.trainers.base import Stage, StageContext


class _TRLStage(Stage):
    trainer_class = ""

    def trainer_kwargs(self, ctx: StageContext) -> dict:
        return {}

    def build_trainer(self, ctx: StageContext):
        from rewardkit.registry import import_target  # noqa: PLC0415

        model_cfg = ctx.spec.model
        config = self.config(ctx, model_init_kwargs=models.init_kwargs(model_cfg), **self.extra_config(ctx))
        cls = import_target(self.trainer_class)
        return cls(
            model=ctx.model_path, args=config, train_dataset=ctx.dataset["train"], processing_class=ctx.tokenizer,
            quantization_config=models.quantization_config(model_cfg), peft_config=models.peft_config(model_cfg),
            callbacks=ctx.callbacks, **self.trainer_kwargs(ctx),
        )

    def extra_config(self, ctx: StageContext) -> dict:
        return {}


class SFTStage(_TRLStage):
    """Supervised fine-tuning (TRL ``SFTTrainer``), prompt/completion, conversational or text data."""

    config_class = "trl:SFTConfig"
    trainer_class = "trl:SFTTrainer"
    column_layouts = (("prompt", "completion"), ("messages",), ("text",))


class GRPOStage(_TRLStage):
    """Group Relative Policy Optimization (TRL ``GRPOTrainer``) with rewards from the registry, plus an optional
    ``dynamic_sampling`` (rewardkit.trainers.dynamic_sampling; off, the trainer is TRL's unchanged)."""

    config_class = "rewardkit.trainers.dynamic_sampling:DynamicSamplingGRPOConfig"
    trainer_class = "rewardkit.trainers.dynamic_sampling:DynamicSamplingGRPOTrainer"
    takes_rewards = True
    column_layouts = (("prompt",),)
    _monitor = None  # set by build_trainer unless monitor.enabled is false

    def extra_config(self, ctx):
        return {"reward_weights": [b.weight for b in ctx.spec.rewards]}

    def build_trainer(self, ctx: StageContext):
        """TRL's trainer with rewardkit's health monitor attached (``trainer.health_monitor``; also for the
        grpo_is and ppo stages, which derive from this one)."""
        from rewardkit import monitor, rollout_log  # noqa: PLC0415

        trainer = super().build_trainer(ctx)
        rollout_log.attach(trainer, ctx)  # first: the monitor shows its records with its alarms
        self._monitor = monitor.attach(trainer, ctx)
        return trainer

    def health_report(self, trainer):
        return self._monitor

    def result_metrics(self, trainer) -> dict:
        """The rollout log's report (records, seconds spent writing); with dynamic sampling its totals over the
        stage (rounds, dropped groups, extra completions, ...)."""
        out = {"rollout_log": trainer.rollout_log.report()} if getattr(trainer, "rollout_log", None) else {}
        if getattr(trainer.args, "dynamic_sampling", False):
            out["dynamic_sampling"] = dict(trainer.dynamic_sampling_totals)
        return out

    def trainer_kwargs(self, ctx):
        return {"reward_funcs": ctx.rewards}


class DPOStage(_TRLStage):
    """Direct Preference Optimization (TRL ``DPOTrainer``) on prompt/chosen/rejected pairs; the preference
    accuracy on the ``test`` split's pairs is measured after training (rewardkit.trainers.dpo)."""

    config_class = "trl:DPOConfig"
    trainer_class = "rewardkit.trainers.dpo:HeldOutDPOTrainer"
    column_layouts = (("prompt", "chosen", "rejected"), ("chosen", "rejected"))

    def result_metrics(self, trainer) -> dict:
        return dict(trainer.summary_metrics)

    def trainer_kwargs(self, ctx):
        test = ctx.dataset["test"] if "test" in ctx.dataset else None
        keep = test is not None and {"chosen", "rejected"} <= set(test.column_names)
        return {"heldout": test.select_columns([c for c in ("prompt", "chosen", "rejected")
                                                if c in test.column_names]) if keep else None}
