"""The hook module named by the ``rewardkit`` entry point; cheap to import (the stage is named by a string)."""

from rewardkit import hookimpl


@hookimpl
def register_trainers(register):
    register("toy_grpo", "rewardkit_toytrainer.stage:ToyGRPOStage",
             description="TRL GRPOTrainer through rewardkit's public trainer contract (test plugin)")
