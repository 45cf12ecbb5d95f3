"""``PPOConfig``: TRL's ``GRPOConfig`` plus PPO's fields, checked with the user's numbers before a model loads
(the trainer is ``rewardkit.trainers.ppo``; docs/ppo.md has every field)."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import GRPOConfig

from rewardkit.algorithms.kl import LOSS_UNBIASED, REWARD_ESTIMATORS
from rewardkit.algorithms.ppo import LOSS_AGGREGATIONS
from rewardkit.algorithms import sampler
from rewardkit.trainers.rollout_kl import RolloutKLConfig
from rewardkit.vllm_lora import VLLMLoRAConfig

CRITICS = ("value_head", "separate")
POLICY_LOSSES = ("clip", "penalty")
REWARD_NORMALIZATION = ("none", "running")
# GRPO fields that mean nothing to PPO's loss: setting one is almost certainly a mistake.
GRPO_ONLY = ("scale_rewards", "multi_objective_aggregation", "top_entropy_quantile", "delta",
             "off_policy_mask_threshold")


@dataclass
class PPOConfig(RolloutKLConfig, VLLMLoRAConfig, GRPOConfig):
    """GRPOConfig plus PPO's fields; rollout reuse and KL control are ``RolloutKLConfig``'s (shared with
    ``grpo_is``), the LoRA sync to vLLM ``VLLMLoRAConfig``'s. ``epsilon`` (and ``epsilon_high``) is the policy
    clip range."""

    num_generations: int | None = field(default=1, metadata={
        "help": "Completions per prompt, each its own episode; 1 suffices since the critic is the baseline."})
    beta: float = field(default=0.05, metadata={
        "help": "Initial KL coefficient β of the per-token reward penalty −β·KL(π‖π_ref) (Ziegler et al. 2019); "
                "0 without beta_target: no reference model is used."})
    kl_estimator: str = field(default="k1", metadata={
        "help": f"Registered per-token estimator of KL(π_θ‖π_ref). With kl_placement: reward (the default) only "
                f"{'/'.join(REWARD_ESTIMATORS)} regularises (rewardkit/algorithms/kl.py); with kl_placement: loss, "
                f"{'/'.join(LOSS_UNBIASED[True])} (with use_bias_correction_kl) or {'/'.join(LOSS_UNBIASED[False])} "
                f"(without)."})
    kl_placement: str = field(default="reward", metadata={
        "help": "'reward': −β·k1 on every token's reward, detached (Ziegler et al. 2019); 'loss': β·k·ρ added to "
                "the loss, aggregated like the policy term (ρ = π_θ/π_old per token when use_bias_correction_kl)."})
    loss_type: str = field(default="bnpo", metadata={
        "help": "How the per-token policy loss (and a KL loss term) is averaged, in TRL's names: 'bnpo' tokens of "
                "the minibatch (token mean, PPO's usual), 'dapo' tokens of the whole accumulation window, 'grpo' "
                "tokens of each sequence then sequences (sequence mean), 'dr_grpo' sum / (sequences × "
                "max_completion_length) (Dr. GRPO's constant, Liu et al. 2025). The value loss stays a token mean."})
    importance_sampling_level: str = field(default="token", metadata={
        "help": "'token': PPO's per-token ratio; 'sequence': GSPO's (Zheng et al. 2025) length-normalised sequence "
                "ratio s_i, per token as sg[s_i]·π_θ(y_t)/sg[π_θ(y_t)] (GSPO-token, so the per-token advantages "
                "of GAE still apply), clipped on s_i."})
    disable_dropout: bool = field(default=True, metadata={
        "help": "Dropout off in the policy (and reference), so generation, the old log-probs and values, and the "
                "update see the same function and the importance ratio is 1 on the first minibatch (verl and "
                "OpenRLHF do this; TRL's default is false)."})
    gamma: float = field(default=1.0, metadata={
        "help": "Discount γ of GAE (Schulman et al. 2016); 1.0 is usual for LM episodes."})
    lam: float = field(default=0.95, metadata={
        "help": "GAE λ trading bias (0: one-step TD) for variance (1: Monte Carlo) (Schulman et al. 2016)."})
    vf_coef: float = field(default=0.1, metadata={
        "help": "Weight of the value loss in the total loss (Schulman et al. 2017, c1)."})
    cliprange_value: float | None = field(default=0.2, metadata={
        "help": "Clip of the value update around the rollout's values (OpenAI baselines PPO2); None: no clip."})
    whiten_advantages: bool = field(default=True, metadata={
        "help": "Normalize advantages to mean 0, std 1 over each rollout's tokens, all processes together "
                "(OpenAI baselines PPO2)."})
    entropy_coef: float = field(default=0.0, metadata={
        "help": "Weight of the entropy bonus (Schulman et al. 2017, c2); 0 disables it."})
    policy_loss: str = field(default="clip", metadata={
        "help": "'clip': PPO's clipped surrogate (Schulman et al. 2017 §3); 'penalty': the adaptive KL(old‖new) "
                "penalty −A·ρ + β_pen·KL as the loss, β_pen halved/doubled toward ppo_penalty_target (§4)."})
    ppo_penalty_target: float = field(default=0.01, metadata={
        "help": "With policy_loss: penalty, d_targ: the KL(old‖new) per token the penalty coefficient aims at "
                "(Schulman et al. 2017 §4 try 0.003, 0.01, 0.03)."})
    ppo_penalty_coef: float = field(default=1.0, metadata={
        "help": "With policy_loss: penalty, the initial β_pen (Schulman et al. 2017 §4 start at 1)."})
    dual_clip: float | None = field(default=None, metadata={
        "help": "Dual-clip c > 1: the loss of a token with A < 0 is at most −c·A (Ye et al. 2020, 'Mastering "
                "Complex Control in MOBA Games with Deep RL'); null: off."})
    critic_learning_rate: float | None = field(default=None, metadata={
        "help": "Learning rate of the critic's parameters (value head, and a separate backbone), same schedule "
                "as the policy's; null: learning_rate (OpenRLHF's critic_learning_rate)."})
    critic_warmup_steps: int = field(default=0, metadata={
        "help": "Optimizer steps at the start that train only the critic (the policy loss is off; a value "
                "head then sees detached hidden states, so the shared backbone stays put) (verl's critic_warmup). "
                "Under several processes the policy gets zero gradients instead of none (DDP needs every "
                "parameter in the graph): with weight_decay > 0 it decays during the warm-up."})
    missing_eos_penalty: float | None = field(default=None, metadata={
        "help": "Subtracted from the score of a completion that ended without EOS (truncated) (TRL's former "
                "PPOTrainer; Ouyang et al. 2022 style length control); null: off."})
    reward_normalization: str = field(default="none", metadata={
        "help": "'running': scores become (s − mean)/std with running statistics over all episodes so far "
                "(Engstrom et al. 2020 'Implementation Matters', reward scaling); 'none'."})
    reward_clip: float | None = field(default=None, metadata={
        "help": "Clip scores (after normalisation) to [−c, c] (Mnih et al. 2015; Engstrom et al. 2020); null: off."})
    critic: str = field(default="value_head", metadata={
        "help": "'value_head': a linear head on the policy's backbone (one model); 'separate': its own backbone."})
    critic_model: str | None = field(default=None, metadata={
        "help": "With critic='separate', the model its backbone is loaded from (default: the policy's). A reward "
                "model saved by trainer: reward_model (…ForSequenceClassification, one label) also initialises "
                "the value head from its score head (Ouyang et al. 2022 initialise the value function from the RM). "
                "'{output_dir}' is replaced by the recipe's output_dir."})
    critic_checkpoint: str | None = field(default=None, metadata={
        "help": "A critic.pt saved by an earlier PPO stage (or that stage's folder) to start the critic from, "
                "e.g. '{output_dir}/ppo/critic.pt'; the critic kind and sizes must match. null: a fresh critic."})

    def __post_init__(self):
        if self.ddp_find_unused_parameters is None:
            # The critic runs outside the DDP-wrapped policy's forward, so DDP's unused-parameter search (its
            # default without gradient checkpointing) marks the critic's parameters ready before backward, and
            # their gradients then fail with "marked as ready twice". Every parameter gets a gradient each step.
            self.ddp_find_unused_parameters = False
        n = self.num_generations
        if n == 1:  # GRPO insists on groups of >= 2 for its group baseline; PPO's baseline is the critic.
            self.num_generations = 2
        try:
            super().__post_init__()
        except ValueError as exc:
            if n == 1 and "num_generations" in str(exc):
                raise ValueError(f"with num_generations=1 the rollout (generation_batch_size="
                                 f"{self.generation_batch_size}) must be even (TRL's sampler); {exc}") from None
            raise
        finally:
            self.num_generations = n
        problems = self.ppo_problems() + self.rollout_kl_problems()
        if problems:
            raise ValueError("; ".join(problems))

    def ppo_problems(self) -> list[str]:
        p = []
        if not 0.0 <= self.gamma <= 1.0:
            p.append(f"gamma must be in [0, 1], got {self.gamma}")
        if not 0.0 <= self.lam <= 1.0:
            p.append(f"lam must be in [0, 1], got {self.lam}")
        if self.vf_coef < 0 or self.entropy_coef < 0 or self.beta < 0:
            p.append(f"vf_coef, entropy_coef and beta must be >= 0, got {self.vf_coef}, {self.entropy_coef}, "
                     f"{self.beta}")
        if self.cliprange_value is not None and self.cliprange_value <= 0:
            p.append(f"cliprange_value must be > 0 or None, got {self.cliprange_value}")
        if self.critic not in CRITICS:
            p.append(f"critic must be one of {', '.join(CRITICS)}, got {self.critic!r}")
        if self.critic_model is not None and self.critic != "separate":
            p.append("critic_model is only used with critic: separate")
        if self.num_generations is None or self.num_generations < 1:
            p.append(f"num_generations must be >= 1, got {self.num_generations}")
        p += self._option_problems()
        return p

    def _option_problems(self) -> list[str]:
        p = []
        if self.policy_loss not in POLICY_LOSSES:
            p.append(f"policy_loss must be one of {', '.join(POLICY_LOSSES)}, got {self.policy_loss!r}")
        if self.ppo_penalty_target <= 0 or self.ppo_penalty_coef <= 0:
            p.append(f"ppo_penalty_target and ppo_penalty_coef must be > 0, got {self.ppo_penalty_target}, "
                     f"{self.ppo_penalty_coef}")
        if self.dual_clip is not None and self.dual_clip <= 1:
            p.append(f"dual_clip must be > 1 (a bound of c·|A| above the clipped loss) or null, got {self.dual_clip}")
        if self.dual_clip is not None and self.policy_loss != "clip":
            p.append("dual_clip bounds the clipped loss; it needs policy_loss: clip")
        if self.critic_learning_rate is not None and self.critic_learning_rate <= 0:
            p.append(f"critic_learning_rate must be > 0 or null, got {self.critic_learning_rate}")
        if self.critic_warmup_steps < 0:
            p.append(f"critic_warmup_steps must be >= 0, got {self.critic_warmup_steps}")
        if self.reward_normalization not in REWARD_NORMALIZATION:
            p.append(f"reward_normalization must be one of {', '.join(REWARD_NORMALIZATION)}, "
                     f"got {self.reward_normalization!r}")
        if self.loss_type not in LOSS_AGGREGATIONS:
            p.append(f"loss_type must be one of {', '.join(LOSS_AGGREGATIONS)} (how PPO's per-token loss is "
                     f"averaged), got {self.loss_type!r}")
        if self.importance_sampling_level not in ("token", "sequence"):
            p.append(f"importance_sampling_level must be token or sequence, got {self.importance_sampling_level!r}")
        p += sampler.biasing_sampling_problems(self.use_vllm, self.vllm_importance_sampling_correction,
                                               self.top_p, self.top_k, self.min_p, self.generation_kwargs)
        if self.reward_clip is not None and self.reward_clip <= 0:
            p.append(f"reward_clip must be > 0 or null, got {self.reward_clip}")
        return p

    def describe_batches(self) -> str:
        """The batch arithmetic in the user's numbers."""
        steps = self.steps_per_generation * self.rollout_epochs // self.gradient_accumulation_steps
        return (f"rollout = generation_batch_size {self.generation_batch_size} episodes "
                f"({self.generation_batch_size // self.num_generations} prompts x num_generations "
                f"{self.num_generations}) in steps_per_generation {self.steps_per_generation} minibatches of "
                f"per_device_train_batch_size {self.per_device_train_batch_size}; rollout_epochs "
                f"{self.rollout_epochs} PPO epochs -> {steps} optimizer steps per rollout (gradient_accumulation_"
                f"steps {self.gradient_accumulation_steps})")
