"""Peak CPU memory (RSS) of grpo_is with QLoRA vs TRL GRPO in full precision, both with β > 0.

    python benchmarks/grpo_is_memory.py

Model: a randomly initialised Qwen2-shaped 0.5B model built locally from a config (no hub): hidden 896, 24 layers,
14 attention heads, 2 KV heads, intermediate 4864, vocab 151936, tied embeddings (Qwen2.5-0.5B's shape,
494M parameters), saved once in bfloat16 under ``runs/bench_cache``. Prompts are the arithmetic task through the
embedded character tokenizer (ids < 110, so any sampled id ≥ the tokenizer's vocab decodes to nothing).

Each configuration runs in its own subprocess (``--child``) for ``--steps`` optimizer steps, and reports its
peak RSS from ``resource.getrusage`` (Linux ``ru_maxrss``; loading included):

- ``grpo_is_qlora``: GRPOISTrainer, 4-bit NF4 base (double quant, float32 compute) + LoRA r=16 on all linear
  layers; β > 0, so the reference is the base with the adapter disabled; old policy = cached log-probs.
- ``trl_full``: TRL GRPOTrainer, float32 weights, AdamW over all parameters, β > 0, so TRL loads a second
  float32 copy of the model as reference.

CPU only: no GPU was available for this work, so no GPU memory figures are claimed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
warnings.filterwarnings("ignore")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import gpu_memory  # noqa: E402  (the model builder both memory benchmarks share)

QWEN2_05B = dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                 intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=4096,
                 rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, rms_norm_eps=1e-6)


def child(kind: str, path: str, a) -> dict:
    import torch
    from transformers import AutoTokenizer

    from rewardkit.builtin.datasets import arithmetic

    torch.set_num_threads(1)  # on a shared 2-core machine two threads are ~8x slower than one
    tok = AutoTokenizer.from_pretrained(path)
    ds = arithmetic(n_train=256, n_test=8)["train"]

    def reward(prompts, completions, answer, **kw):
        return [float(c.strip() == x) + 0.01 * len(c) for c, x in zip(completions, answer)]

    common = dict(output_dir=os.path.join(ROOT, "runs", "bench_memory", kind), per_device_train_batch_size=a.batch,
                  num_generations=a.num_generations, max_completion_length=a.completion_len, max_steps=a.steps,
                  learning_rate=1e-5, beta=0.04, report_to="none", save_strategy="no", bf16=False,
                  logging_steps=1, disable_tqdm=True, model_init_kwargs={"dtype": torch.float32}, seed=0)
    t0 = time.time()
    if kind == "grpo_is_qlora":
        from peft import LoraConfig
        from transformers import BitsAndBytesConfig

        from rewardkit.models import keep_4bit_trainable
        from rewardkit.trainers.grpo_is import GRPOISConfig, GRPOISTrainer

        cfg = GRPOISConfig(rollout_epochs=2, early_stop_kl=0.1, kl_estimator="k3", **common)
        q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.float32)
        lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
        tr = GRPOISTrainer(model=path, args=cfg, train_dataset=ds, processing_class=tok, reward_funcs=[reward],
                           quantization_config=q, peft_config=lora)
        keep_4bit_trainable(tr.model)
        has_ref = tr.ref_model is not None
    elif kind == "trl_full":
        from trl import GRPOConfig, GRPOTrainer

        cfg = GRPOConfig(**common)
        tr = GRPOTrainer(model=path, args=cfg, train_dataset=ds, processing_class=tok, reward_funcs=[reward])
        has_ref = tr.ref_model is not None
    else:
        raise ValueError(kind)
    loaded_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tr.train()
    trainable = sum(p.numel() for p in tr.model.parameters() if p.requires_grad)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux -> MiB
    return {"kind": kind, "peak_rss_mib": round(peak), "peak_rss_after_load_mib": round(loaded_rss),
            "steps": tr.state.global_step, "trainable_params": trainable, "separate_reference_model": has_ref,
            "seconds": round(time.time() - t0, 1)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--child", choices=["grpo_is_qlora", "trl_full"], help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--batch", type=int, default=4, help="completions per step")
    p.add_argument("--num-generations", type=int, default=4)
    p.add_argument("--completion-len", type=int, default=8)
    p.add_argument("--min-free-gib", type=float, default=14.0,
                   help="refuse to start the full-precision run with less available memory (shared machine)")
    p.add_argument("--out", default=os.path.join(ROOT, "runs", "bench_memory", "results.json"))
    a = p.parse_args()
    path = os.path.join(ROOT, "runs", "bench_cache", "qwen2-0.5b-shape-random")
    if a.child:
        print("RESULT " + json.dumps(child(a.child, path, a)), flush=True)
        return
    import psutil

    gpu_memory.build_model(path, QWEN2_05B, "cpu")
    results = {}
    for kind in ("grpo_is_qlora", "trl_full"):
        avail = psutil.virtual_memory().available / 2 ** 30
        load = os.getloadavg()
        if kind == "trl_full" and avail < a.min_free_gib:
            sys.exit(f"only {avail:.1f} GiB available; the full-precision run needs ~12 GiB. Retry later "
                     f"or lower --min-free-gib at your own risk.")
        cmd = [sys.executable, os.path.abspath(__file__), "--child", kind, "--steps", str(a.steps), "--batch",
               str(a.batch), "--num-generations", str(a.num_generations), "--completion-len", str(a.completion_len)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"{kind} failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        results[kind] = {**json.loads(line[7:]), "available_gib_before": round(avail, 1),
                         "load_average_before": [round(x, 2) for x in load]}
        print(json.dumps(results[kind]), flush=True)
    ratio = results["grpo_is_qlora"]["peak_rss_mib"] / results["trl_full"]["peak_rss_mib"]
    summary = {"model": {"arch": "qwen2", **QWEN2_05B, "init": "random, saved bf16", "path": path},
               "batch": {"completions_per_step": a.batch, "num_generations": a.num_generations,
                         "max_completion_length": a.completion_len, "steps": a.steps},
               "results": results, "peak_rss_ratio_qlora_vs_full": round(ratio, 3)}
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(summary, f, indent=1)
    print(f"peak RSS: grpo_is QLoRA {results['grpo_is_qlora']['peak_rss_mib']} MiB, TRL full precision "
          f"{results['trl_full']['peak_rss_mib']} MiB -> ratio {ratio:.3f} (goal <= 0.35)\nwrote {a.out}")


if __name__ == "__main__":
    main()
