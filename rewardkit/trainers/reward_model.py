"""Reward-model stage: TRL's ``RewardTrainer`` (Bradley–Terry on preference pairs), LoRA/4-bit as any stage.

The result is a sequence-classification model with one output, written to ``<output_dir>/<stage>/model`` and
read by the ``reward_model`` reward. It is not a policy: the pipeline does not start the next stage from it
and does not evaluate it by generation; it reports held-out preference accuracy on the data's test split.
"""

from __future__ import annotations

from trl import RewardTrainer

from rewardkit import models
from rewardkit.reward_scoring import pair_texts, score_texts
from rewardkit.trainers.base import HeldOutMetrics
from rewardkit.trainers.trl_stages import TRLStage


class SequenceClassifier:
    """How the pipeline (re)loads a reward model: ``AutoModelForSequenceClassification`` with one label.

    ``models.save_merged`` reloads the base with this class to merge a LoRA adapter; without ``num_labels=1``
    transformers would build a 2-label head that the trained 1-output ``score`` layer does not fit.
    """

    @staticmethod
    def from_pretrained(path, **kwargs):
        from transformers import AutoModelForSequenceClassification  # noqa: PLC0415

        kwargs.setdefault("num_labels", 1)
        return AutoModelForSequenceClassification.from_pretrained(path, **kwargs)


def preference_accuracy(model, tokenizer, dataset, batch_size: int = 64, max_length: int = 512) -> dict:
    """Share of pairs where the model scores ``chosen`` above ``rejected`` (ties count as wrong)."""
    prompts = list(dataset["prompt"]) if "prompt" in dataset.column_names else [""] * len(dataset)
    chosen = score_texts(model, tokenizer, pair_texts(tokenizer, prompts, list(dataset["chosen"])),
                         batch_size, max_length)
    rejected = score_texts(model, tokenizer, pair_texts(tokenizer, prompts, list(dataset["rejected"])),
                           batch_size, max_length)
    wins = [c > r for c, r in zip(chosen, rejected, strict=True)]
    margin = sum(c - r for c, r in zip(chosen, rejected, strict=True)) / len(wins)
    return {"heldout_accuracy": sum(wins) / len(wins), "heldout_margin": margin, "heldout_pairs": len(wins)}


class HeldOutRewardTrainer(HeldOutMetrics, RewardTrainer):
    """RewardTrainer that measures preference accuracy on a held-out split after training (and logs it)."""

    def heldout_metrics(self) -> dict:
        return preference_accuracy(self.model, self.processing_class, self.heldout,
                                   self.args.per_device_eval_batch_size, self.args.max_length or 512)


class RewardModelStage(TRLStage):
    """Reward model (TRL ``RewardTrainer``, Bradley–Terry) on prompt/chosen/rejected pairs."""

    config_class = "trl:RewardConfig"
    trainer_class = "rewardkit.trainers.reward_model:HeldOutRewardTrainer"
    model_class = "rewardkit.trainers.reward_model:SequenceClassifier"
    produces_policy = False  # the pipeline keeps the previous policy for the next stage
    column_layouts = (("prompt", "chosen", "rejected"), ("chosen", "rejected"))

    def result_metrics(self, trainer) -> dict:
        return dict(trainer.summary_metrics)

    def build_trainer(self, ctx):
        model_cfg = ctx.spec.model
        config = self.config(ctx, model_init_kwargs=models.init_kwargs(model_cfg))
        heldout = ctx.dataset["test"] if "test" in ctx.dataset else None
        return HeldOutRewardTrainer(
            model=ctx.model_path, args=config, train_dataset=ctx.dataset["train"], processing_class=ctx.tokenizer,
            quantization_config=models.quantization_config(model_cfg),
            # SEQ_CLS makes peft train and save the new `score` head with the adapters.
            peft_config=models.peft_config(model_cfg, task_type="SEQ_CLS"), callbacks=ctx.callbacks,
            heldout=heldout,
        )
