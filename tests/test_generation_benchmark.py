"""benchmarks/generation.py: the model it measures is the ~30M-parameter one its docstring and README name."""

import importlib.util
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bench():
    spec = importlib.util.spec_from_file_location("generation_bench", os.path.join(REPO, "benchmarks", "generation.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_the_benchmark_model_is_8_layers_of_512_with_about_30m_parameters():
    import torch
    from transformers import AutoModelForCausalLM

    from rewardkit.builtin.models import build_tokenizer

    bench = _bench()
    s = bench.Setup()
    assert (s.layers, s.width, s.prompts, s.samples, s.new_tokens) == (8, 512, 64, 8, 128)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(bench.model_config(s, build_tokenizer()))
    assert 29e6 <= sum(p.numel() for p in model.parameters()) <= 31e6
    assert s.prompts * s.samples % s.steps_per_rollout == 0  # whole optimizer steps per rollout


def test_the_reward_and_rates_it_reports():
    bench = _bench()
    assert bench.digit_share(["12ab", ""]) == [0.5, 0.0]
    rates = bench._rates([2.0, 1.0, 4.0], bench.QUICK)
    assert rates["median_s"] == 2.0 and rates["worst_s"] == 4.0
    assert rates["completions_per_s"] == bench.QUICK.prompts * bench.QUICK.samples / 2.0
