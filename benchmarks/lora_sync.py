"""A LoRA policy's weight sync to the colocated vLLM engine: served as a LoRA adapter (rewardkit.vllm_lora, the
default) vs merged into the base weights and pushed whole (TRL's way, ``vllm_lora_adapter: false``), through the
trainer's own generation object (``rewardkit.vllm_generation.SyncedVLLMGeneration``), on CPU.

    .venv-vllm/bin/python benchmarks/lora_sync.py [--syncs 5] [--out runs/bench_lora_sync.json]
    .venv-vllm/bin/python benchmarks/lora_sync.py --quick      # a seconds-long smoke of the whole path, no figures

For each mode, one engine (started, then shut down): ``--syncs`` rounds of one Adam step on the adapter, the sync
(its seconds, ``last_sync_seconds``) and a rollout generated through it (its seconds), then the largest
|log p_vLLM - log p_trainer| over every sampled token of every round, the trainer's side being the peft model's own
forward pass in float32. The first round's sync is reported apart (it loads the LoRA machinery or, merged, is no
different). Model: benchmarks/generation.py's 30.4M-parameter Llama (8 layers x 512, float32, random weights,
``runs/bench_cache``) with rewardkit's default adapter (``model.lora: {r: 16}``: alpha 32, all linear layers).
Run it on an otherwise idle machine: every figure is wall-clock.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import asdict

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from generation import QUICK, Setup, build_model, prompts, report  # noqa: E402
from rewardkit import stage_cache  # noqa: E402

COMPLETIONS, NEW_TOKENS = 32, 32  # one rollout: 32 completions of exactly 32 tokens (16 and 8 with --quick)


def lora_policy(path: str):
    """The benchmark model with rewardkit's default adapter, as a recipe's ``model.lora: {r: 16}`` builds it."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from rewardkit import models

    base = AutoModelForCausalLM.from_pretrained(path, dtype="float32")
    return get_peft_model(base, models.peft_config({"lora": {"r": 16}}))  # rewardkit fills in its other defaults


def generation(model, tokenizer, adapter: bool, completions: int, new_tokens: int):
    """The trainer's colocated generation object for ``model``, its engine started (as GRPO builds it)."""
    from accelerate import Accelerator

    from rewardkit import vllm_sync
    from rewardkit.vllm_generation import SyncedVLLMGeneration

    vllm_sync.set_env_defaults()
    return SyncedVLLMGeneration(
        model=model, accelerator=Accelerator(cpu=True), processing_class=tokenizer, mode="colocate",
        gpu_memory_utilization=0.05, max_model_length=256, max_num_seqs=completions, temperature=1.0,
        max_completion_length=new_tokens, logprobs=0, generation_kwargs={"ignore_eos": True}, lora_adapter=adapter)


def adam_step(model, opt, batch) -> None:
    model.train()
    opt.zero_grad()
    model(**batch, labels=batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)).loss.backward()
    opt.step()
    model.eval()


def max_gap(model, prompt_ids, completion_ids, logprobs) -> float:
    """Largest |log p_vLLM - log p_trainer| over the sampled tokens, the trainer's from ``model``'s forward."""
    import torch

    gap = 0.0
    for p, c, lp in zip(prompt_ids, completion_ids, logprobs):
        with torch.no_grad():
            logits = model(torch.tensor([list(p) + list(c)])).logits[0, len(p) - 1:-1].float()
        mine = logits.log_softmax(-1).gather(-1, torch.tensor(c)[:, None])[:, 0]
        gap = max(gap, (mine - torch.tensor([step[0] for step in lp])).abs().max().item())
    return gap


def time_mode(path: str, s: Setup, adapter: bool, syncs: int, completions: int, new_tokens: int) -> dict:
    """One mode's figures: engine start, each sync's and each rollout's seconds, the largest log-prob gap."""
    import torch
    from transformers import AutoTokenizer

    from rewardkit import vllm_sync

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = lora_policy(path)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = tokenizer([q + "99</s>" for q in prompts(s)[:8]], return_tensors="pt", padding=True)
    ids = [tokenizer(q)["input_ids"] for q in prompts(s, rollouts=-(-completions // s.prompts))[:completions]]
    start = time.perf_counter()
    gen = generation(model, tokenizer, adapter, completions, new_tokens)
    result = {"engine_start_s": time.perf_counter() - start, "sync_s": [], "rollout_s": [], "max_abs_dlogp": 0.0}
    try:
        for _ in range(syncs):
            adam_step(model, opt, batch)
            gen.sync_weights()
            start = time.perf_counter()
            prompt_ids, completion_ids, logprobs, _ = gen.generate(ids, None, num_generations=1)
            result["rollout_s"].append(time.perf_counter() - start)
            result["sync_s"].append(gen.last_sync_seconds)
            result["max_abs_dlogp"] = max(result["max_abs_dlogp"], max_gap(model, prompt_ids, completion_ids,
                                                                           logprobs))
        result["served_as_adapter"] = gen.adapter is not None
        result["adapter_mb"] = adapter_mb(gen)
    finally:
        vllm_sync.shutdown(gen.llm)
        if gen.adapter is not None:
            gen.adapter.close()
    return result


def adapter_mb(gen) -> float | None:
    """The size of the adapter files one sync writes, in MB (None when merging)."""
    if gen.adapter is None:
        return None
    folder = gen.adapter.request.lora_path
    return sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder)) / 1e6


def run(s: Setup, syncs: int, cache: str, quick: bool) -> dict:
    path = os.path.join(cache, f"llama-{s.layers}x{s.width}-{s.intermediate}")
    params = build_model(s, path)
    completions, new_tokens = (16, 8) if quick else (COMPLETIONS, NEW_TOKENS)
    result = {"setup": asdict(s), "parameters": params, "syncs": syncs, "completions": completions,
              "new_tokens": new_tokens, "cpu": stage_cache.cpu_model()}
    for name, adapter in (("adapter", True), ("merged", False)):
        result[name] = time_mode(path, s, adapter, syncs, completions, new_tokens)
    return result


def table(r: dict) -> str:
    a, m = r["adapter"], r["merged"]

    def later(x, key):
        rest = x[key][1:] or x[key]
        return f"{statistics.median(rest):.3f} ({min(rest):.3f}-{max(rest):.3f})"

    rows = [
        f"model: {r['parameters'] / 1e6:.1f}M parameters ({r['setup']['layers']} layers x {r['setup']['width']}), "
        f"LoRA r 16 all-linear (adapter {a['adapter_mb']:.2f} MB), {r['cpu']}; {r['syncs']} syncs per mode, each "
        f"after an Adam step, each followed by a rollout of {r['completions']} x {r['new_tokens']} tokens",
        f"{'':34}{'adapter':>22}{'merged':>22}",
        f"{'first sync s':34}{a['sync_s'][0]:>22.3f}{m['sync_s'][0]:>22.3f}",
        f"{'later syncs s, median (min-max)':34}{later(a, 'sync_s'):>22}{later(m, 'sync_s'):>22}",
        f"{'rollout s, median (min-max)':34}{later(a, 'rollout_s'):>22}{later(m, 'rollout_s'):>22}",
        f"{'max |log p_vLLM - log p_trainer|':34}{a['max_abs_dlogp']:>22.2e}{m['max_abs_dlogp']:>22.2e}",
        f"{'engine start s':34}{a['engine_start_s']:>22.1f}{m['engine_start_s']:>22.1f}",
        f"served as an adapter: {a['served_as_adapter']} / {m['served_as_adapter']}",
    ]
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--syncs", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="a tiny model and rollout: a smoke run, no figures")
    parser.add_argument("--out", default=os.path.join(ROOT, "runs", "bench_lora_sync.json"))
    parser.add_argument("--cache", default=os.path.join(ROOT, "runs", "bench_cache"))
    args = parser.parse_args(argv)
    result = run(QUICK if args.quick else Setup(), 2 if args.quick else args.syncs, args.cache, args.quick)
    report(table(result), result, None if args.quick else args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
