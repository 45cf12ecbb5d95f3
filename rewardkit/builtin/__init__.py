"""rewardkit's own components, registered through the same hooks as any third-party plugin.

Declared in rewardkit's pyproject as the ``builtin`` entry point of group ``rewardkit``; everything heavy is
named by a ``"module:attribute"`` string so that listing plugins imports no torch.
"""

from rewardkit import hookimpl
from rewardkit.builtin.datasets import (ARITHMETIC_COLUMNS, PREFERENCE_COLUMNS, REVERSE_COLUMNS,
                                        REVERSE_PREFERENCE_COLUMNS)
from rewardkit.algorithms.kl import ESTIMATORS
from rewardkit.builtin.tools import TOOL_MULTIPLICATION_COLUMNS


@hookimpl
def register_rewards(register):
    register("exact_match", "rewardkit.builtin.rewards:ExactMatch", columns="rewardkit.builtin.rewards:exact_match_columns",
             description="1.0 if the completion's first line equals a gold column (default 'answer')")
    register("reward_model", "rewardkit.builtin.rewards:RewardModel", columns=[],
             description="score from a trained sequence-classification reward model (params: path, ...)")


@hookimpl
def register_kl_estimators(register):
    for name, (target, description) in ESTIMATORS.items():
        register(name, target, description=description)


@hookimpl
def register_trainers(register):
    register("sft", "rewardkit.trainers.trl_stages:SFTStage", description="TRL SFTTrainer")
    register("grpo", "rewardkit.trainers.trl_stages:GRPOStage", description="TRL GRPOTrainer")
    register("dpo", "rewardkit.trainers.trl_stages:DPOStage", description="TRL DPOTrainer")
    register("grpo_is", "rewardkit.trainers.grpo_is:GRPOISStage", description="multi-epoch importance-sampled GRPO, target-KL early stop")
    register("ppo", "rewardkit.trainers.ppo:PPOStage",
             description="PPO with a value head (GAE, clipped losses, adaptive KL) on TRL's GRPO machinery")
    register("reward_model", "rewardkit.trainers.reward_model:RewardModelStage",
             description="TRL RewardTrainer (Bradley-Terry) on preference pairs; held-out accuracy")
    register("rloo", "rewardkit.trainers.trl_stages:RLOOStage",
             description="TRL RLOOTrainer (REINFORCE leave-one-out baseline) with rewards from the registry")
    register("kto", "rewardkit.trainers.trl_stages:KTOStage",
             description="TRL KTOTrainer on desirable/undesirable completions (or preference pairs, unpaired)")


@hookimpl
def register_datasets(register):
    register("arithmetic", "rewardkit.builtin.datasets:arithmetic", columns=ARITHMETIC_COLUMNS,
             description="seeded a+b= problems with answer column, disjoint train/test")
    register("arithmetic_preferences", "rewardkit.builtin.datasets:arithmetic_preferences",
             columns=PREFERENCE_COLUMNS, description="arithmetic preference pairs (prompt/chosen/rejected)")
    register("reverse", "rewardkit.builtin.datasets:reverse", columns=REVERSE_COLUMNS,
             description="seeded abcd= -> dcba string reversal with answer column, disjoint train/test")
    register("reverse_preferences", "rewardkit.builtin.datasets:reverse_preferences",
             columns=REVERSE_PREFERENCE_COLUMNS, description="reversal preference pairs, rejected = near miss")
    register("reverse_policy_preferences", "rewardkit.builtin.datasets:reverse_policy_preferences",
             columns=REVERSE_PREFERENCE_COLUMNS,
             description="reversal preference pairs, rejected = a policy model's own wrong sample")
    register("tool_multiplication", "rewardkit.builtin.tools:tool_multiplication", columns=TOOL_MULTIPLICATION_COLUMNS,
             description="seeded multi-digit a*b= problems as chat messages, with tool-call episodes for SFT")


@hookimpl
def register_models(register):
    register("tiny-llama", "rewardkit.builtin.models:tiny_llama",
             description="3-layer 128-wide Llama, character tokenizer with chat template (CPU quick start)")
    register("tiny-qwen2", "rewardkit.builtin.models:tiny_qwen2",
             description="2-layer 128-wide Qwen2, character tokenizer with chat template")
    register("tiny-llama-tools", "rewardkit.builtin.models:tiny_llama_tools",
             description="tiny-llama with a tool-calling chat template and response parser (<|call|>, <|tool|>)")


@hookimpl
def register_environments(register):
    register("calculator", "rewardkit.builtin.tools:Calculator",
             description="one tool, mul(a, b): the product of two integers (for tool_multiplication)")
