"""``toy_grpo``: TRL's GRPOTrainer as a rewardkit stage, written from ``rewardkit``'s public names alone."""

from __future__ import annotations

from rewardkit import Stage, StageContext


class ToyGRPOStage(Stage):
    """GRPO on prompts with the recipe's rewards. Its own rule: an even ``num_generations`` (a toy rule, so that a
    test can see a plugin's check reach ``rewardkit validate``)."""

    config_class = "trl:GRPOConfig"
    column_layouts = (("prompt",),)
    takes_rewards = True
    rollout_metrics = True  # GRPOTrainer logs reward, rewards/<name>/mean, kl, entropy: rewardkit attaches its monitor

    @classmethod
    def check_stage(cls, spec, columns, registry) -> list[str]:
        problems = super().check_stage(spec, columns, registry)
        n = spec.trainer_args.get("num_generations", 8)
        if isinstance(n, int) and n % 2:
            problems.append(f"trainer.num_generations: toy_grpo wants an even number, got {n}")
        return problems

    def build_trainer(self, ctx: StageContext):
        from trl import GRPOTrainer  # noqa: PLC0415 - only when a stage trains

        config = self.config(ctx, reward_weights=[block.weight for block in ctx.spec.rewards])
        return GRPOTrainer(model=ctx.model_path, args=config, reward_funcs=ctx.rewards,
                           train_dataset=ctx.dataset["train"], processing_class=ctx.tokenizer, callbacks=ctx.callbacks)

    def result_metrics(self, trainer) -> dict:
        rewards = [row["reward"] for row in trainer.state.log_history if "reward" in row]
        return {"toy_logged_rewards": len(rewards), "toy_last_reward": rewards[-1] if rewards else None}

    @classmethod
    def summary_lines(cls, info: dict) -> list[str]:
        return [f"toy_grpo: {info.get('toy_logged_rewards', 0)} reward records, last {info.get('toy_last_reward')}"]
