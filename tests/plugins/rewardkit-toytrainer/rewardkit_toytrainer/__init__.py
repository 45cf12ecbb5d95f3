"""A third-party rewardkit trainer: TRL's GRPOTrainer as stage ``toy_grpo``, through the public contract."""
