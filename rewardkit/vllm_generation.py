"""TRL's ``VLLMGeneration`` with the engine built in the policy's dtype, the colocated weight sync that works on
vLLM-CPU (``rewardkit.vllm_sync`` says why) and a LoRA policy served as an adapter (``rewardkit.vllm_lora``).
Imported only when a trainer runs with ``use_vllm``."""

from __future__ import annotations

import functools
import weakref

import trl.generation.vllm_generation as trl_vllm
from accelerate.utils import is_peft_model
from transformers import TrainerCallback

from rewardkit import vllm_lora, vllm_sync

NOT_SERVED = ("critic.",)  # submodules a trainer adds to the policy (PPO's value head), not part of the served LM


class SyncedVLLMGeneration(trl_vllm.VLLMGeneration):
    """Differs from TRL's class in colocate mode only: the ``LLM`` is built with ``dtype`` (the policy's; TRL leaves
    vLLM to downcast float32 to bfloat16) and, without CUDA, eagerly (no torch.compile: on the small CPU models this
    serves, compiling costs more start-up than it saves); a LoRA policy (``lora_adapter``, unless vLLM cannot carry
    its adapter) gets an engine with LoRA enabled, its adapter synced by :class:`rewardkit.vllm_lora.AdapterSync`
    and passed with every generation, and the base weights never pushed; otherwise :meth:`sync_weights` loads the
    (merged) weights through vLLM's ``reload_weights`` with a tied ``lm_head`` sent explicitly, leaving out the
    modules a trainer attached to the policy that vLLM's model does not have (PPO's ``critic``).
    ``last_sync_seconds`` is the last sync's duration, ``adapter`` the AdapterSync (None when merging);
    ``sync_metrics``, when a trainer's metrics are put there (``vllm_sync.log_syncs``), gets each sync's figures."""

    last_sync_seconds: float | None = None
    adapter: vllm_lora.AdapterSync | None = None
    sync_metrics: dict | None = None

    def __init__(self, *args, lora_adapter: bool = True, **kwargs):
        self.lora_adapter = lora_adapter  # read by _init_vllm, which TRL's __init__ calls
        super().__init__(*args, **kwargs)

    def _init_vllm(self):
        if self.mode != "colocate":
            return super()._init_vllm()
        import torch  # noqa: PLC0415

        extra = {"dtype": vllm_sync.dtype_name(self.model)}
        if not torch.cuda.is_available():
            extra["enforce_eager"] = True
        self.adapter = self._adapter_sync()
        if self.adapter is not None:
            extra.update(vllm_lora.engine_kwargs(self.model))
        original = trl_vllm.LLM
        trl_vllm.LLM = functools.partial(original, **extra)
        try:
            return super()._init_vllm()
        finally:
            trl_vllm.LLM = original

    def _adapter_sync(self) -> vllm_lora.AdapterSync | None:
        """An AdapterSync for a LoRA policy vLLM can serve as an adapter; None (merging) otherwise, with the reason
        said when the policy has LoRA."""
        if not is_peft_model(self.model) or not self.lora_adapter:
            return None
        sharded = self._dist.is_fsdp or self._dist.is_zero3
        reason = vllm_lora.unsupported(self.model, NOT_SERVED, sharded)
        if self.enable_sleep_mode:  # TRL's own sync runs then, re-pushing all the weights after each sleep
            reason = "vllm_enable_sleep_mode (TRL's sync pushes all the weights after each sleep)"
        if reason:
            vllm_lora.fall_back(reason)
            return None
        return vllm_lora.AdapterSync(self.model)

    def sync_weights(self):
        if self.mode != "colocate" or self.enable_sleep_mode:
            return super().sync_weights()
        if self.adapter is None or not self._push_adapter():
            base = getattr(self.model, "get_base_model", lambda: self.model)()
            named = ((n, p) for n, p in self._iter_named_params() if not n.startswith(NOT_SERVED))
            weights = vllm_sync.checkpoint_weights(named, base.config)
            self.last_sync_seconds = vllm_sync.push_weights(self.llm, weights)
        self._log_sync()
        return None

    def _log_sync(self) -> None:
        """The sync's seconds (and, for a LoRA policy, whether it went as an adapter) into the trainer's log."""
        if self.sync_metrics is None:
            return
        self.sync_metrics["vllm/sync_seconds"].append(self.last_sync_seconds)
        if is_peft_model(self.model):
            self.sync_metrics["vllm/lora_adapter"].append(float(self.adapter is not None))

    def _push_adapter(self) -> bool:
        """Syncs the adapter; False when vLLM refused it at the first push (a target module its model cannot wrap),
        after which every sync merges."""
        first = self.adapter.request is None
        try:
            self.last_sync_seconds = self.adapter.push(self.llm)
        except ValueError as exc:
            if not first:
                raise
            vllm_lora.fall_back(f"vLLM refused it: {exc}")
            self.adapter.close()
            self.adapter = None
            return False
        return True

    def generate(self, *args, **kwargs):
        request = self.adapter.request if self.adapter is not None else None
        with vllm_lora.generating_with(self.llm, request):
            return super().generate(*args, **kwargs)


class StopEngineCallback(TrainerCallback):
    """Shuts down a trainer's colocated engine when training ends (pipeline.Run.train also does when it raises)."""

    def __init__(self, trainer):
        self.trainer = weakref.ref(trainer)  # the trainer holds this callback: no cycle keeping the model alive

    def on_train_end(self, args, state, control, **kwargs):
        trainer = self.trainer()
        if trainer is not None:
            vllm_sync.stop_engine(trainer)
