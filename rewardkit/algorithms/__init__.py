"""The algorithms' arithmetic as pure functions on tensors: no model, no trainer, no TRL; each unit-tested.

- ``masked``: masked means, variance, whitening, global (all-process) means, KL(old‖new)
- ``kl``: per-token KL(π‖π_ref) estimators (their names: ``kl.ESTIMATORS``) and the β controllers
- ``ppo``: per-token rewards, GAE, the clipped policy and value losses (``trainer: ppo``)
- ``sampler``: the sampler/trainer (vLLM/trainer) correction weights and their statistics, the combined weight
- ``grpo_is``: importance weights, clip masks, TRL's loss aggregations, epoch reshuffles (``trainer: grpo_is``)
"""
