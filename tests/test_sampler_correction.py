"""The sampler/trainer correction (rewardkit.algorithms.sampler) against numbers worked by hand, its place in
grpo_is's and PPO's losses, and the refusal of sampling filters that would bias it. Main venv: no vLLM needed."""

import math
import os

import pytest
import torch

from rewardkit.algorithms import ppo as alg
from rewardkit.algorithms import sampler

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LN = math.log

# one row: tokens 1, 2 real, token 3 padding (values there must not count). Trainer/sampler probabilities
# 0.5/0.25 -> r = 2, 0.2/0.4 -> r = 0.5.
TRAINER = torch.tensor([[LN(0.5), LN(0.2), LN(0.9)]])
SAMPLER = torch.tensor([[LN(0.25), LN(0.4), LN(0.01)]])
MASK = torch.tensor([[1.0, 1.0, 0.0]])


def close(actual, expected):
    torch.testing.assert_close(actual, torch.tensor(expected), rtol=1e-6, atol=1e-6)


K3 = ((2 - 1 - LN(2)) + (0.5 - 1 - LN(0.5))) / 2  # KL(π_samp‖π_trainer) per token: 0.30685 and 0.19315 -> 0.25


def test_token_truncate_caps_each_token_and_logs_the_raw_ratios():
    w, stats = sampler.sampler_weights(TRAINER, SAMPLER, MASK, "token_truncate", None, 1.5)
    close(w, [[1.5, 0.5, 0.0]])
    s = sampler.summarise(stats)
    assert s["ratio_mean"] == pytest.approx(1.25) and s["ratio_min"] == pytest.approx(0.5)
    assert s["ratio_max"] == pytest.approx(2.0)  # before truncation, not the capped 1.5
    assert s["capped"] == pytest.approx(0.5) and s["kl"] == pytest.approx(K3) and K3 == pytest.approx(0.25)
    w, _ = sampler.sampler_weights(TRAINER, SAMPLER, MASK, "token_truncate", 0.8, 1.5)
    close(w, [[1.5, 0.8, 0.0]])  # the lower bound lifts 0.5 to 0.8


def test_token_mask_zeroes_tokens_outside_the_bounds():
    w, stats = sampler.sampler_weights(TRAINER, SAMPLER, MASK, "token_mask", 0.6, 3.0)
    close(w, [[2.0, 0.0, 0.0]])
    assert sampler.summarise(stats)["capped"] == pytest.approx(0.5)


def test_sequence_modes_use_the_product_of_the_token_ratios():
    trainer = torch.cat([TRAINER, torch.tensor([[LN(0.8), LN(0.6), 0.0]])])
    samp = torch.cat([SAMPLER, torch.tensor([[LN(0.4), LN(0.3), 0.0]])])  # 2 x 2 = 4
    mask = torch.cat([MASK, MASK])
    w, stats = sampler.sampler_weights(trainer, samp, mask, "sequence_truncate", None, 3.0)
    close(w, [[1.0, 1.0, 0.0], [3.0, 3.0, 0.0]])  # 2 x 0.5 = 1; 4 capped at 3
    s = sampler.summarise(stats)
    assert (s["ratio_min"], s["ratio_max"], s["ratio_mean"], s["capped"]) == pytest.approx((1.0, 4.0, 2.5, 0.5))
    w, _ = sampler.sampler_weights(trainer, samp, mask, "sequence_mask", None, 3.0)
    close(w, [[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])


def test_a_token_vllm_gave_no_log_prob_for_has_ratio_one():
    samp = SAMPLER.clone()
    samp[0, 0] = float("nan")
    w, stats = sampler.sampler_weights(TRAINER, samp, MASK, "token_truncate", None, 3.0)
    close(w, [[1.0, 0.5, 0.0]])
    with pytest.raises(ValueError, match="vllm_importance_sampling_mode must be one of"):
        sampler.sampler_weights(TRAINER, SAMPLER, MASK, "token", None, 3.0)


def test_combined_weight_multiplies_the_separately_truncated_factors():
    w_samp, w_replay = torch.tensor([[1.5, 0.5]]), torch.tensor([[2.0, 1.0]])
    close(sampler.combined_weight(w_samp, w_replay), [[3.0, 0.5]])
    assert sampler.combined_weight(None, w_replay) is w_replay and sampler.combined_weight(w_samp, None) is w_samp
    assert sampler.combined_weight(None, None) is None


def test_ppo_policy_loss_weights_each_token():
    """ρ = 1 (logp = old): the clipped loss is −A per token; with w = (1.5, 0.5) and A = (1, −2) it is
    (−1.5 + 1.0) / 2 = −0.25; the penalty loss (k3 = 0 at ρ = 1) gives the same."""
    logp = torch.tensor([[-1.0, -2.0]])
    adv, mask, w = torch.tensor([[1.0, -2.0]]), torch.ones(1, 2), torch.tensor([[1.5, 0.5]])
    assert alg.policy_loss(logp, logp, adv, mask)[0].item() == pytest.approx(0.5)
    assert alg.policy_loss(logp, logp, adv, mask, weight=w)[0].item() == pytest.approx(-0.25)
    assert alg.penalty_policy_loss(logp, logp, adv, mask, coef=0.1, weight=w)[0].item() == pytest.approx(-0.25)


BIASING = [("top_p", 0.9), ("top_k", 5), ("min_p", 0.05)]


@pytest.mark.parametrize("field,value", BIASING)
@pytest.mark.parametrize("config_path", ["rewardkit.trainers.grpo_is:GRPOISConfig",
                                         "rewardkit.trainers.ppo_config:PPOConfig"])
def test_sampling_filters_that_bias_the_ratio_are_refused_with_vllm(tmp_path, config_path, field, value):
    from rewardkit.registry import import_target

    cls = import_target(config_path)
    kw = dict(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=2, report_to="none", bf16=False)
    with pytest.raises(ValueError, match=f"{field}={value!r} with use_vllm: vLLM's log-probs are those of the "
                                         "truncated distribution"):
        cls(**kw, use_vllm=True, **{field: value})
    with pytest.raises(ValueError, match=f"{field}={value!r} with use_vllm"):  # also through generation_kwargs
        cls(**kw, use_vllm=True, generation_kwargs={field: value})
    if field == "top_p":  # vLLM's min_tokens masks EOS in its log-probs: the same bias
        with pytest.raises(ValueError, match="generation_kwargs.min_tokens=2 with use_vllm: vLLM masks the end"):
            cls(**kw, use_vllm=True, generation_kwargs={"min_tokens": 2})
    cls(**kw, **{field: value})  # without vLLM the trainer samples and scores the same distribution
    cls(**kw, use_vllm=True)  # full support: accepted (the correction applies)


def test_loading_a_recipe_refuses_the_filter_naming_the_trainer_section():
    """Before any model loads (``load_recipe`` validates), as a RecipeError (the CLI's exit code 2)."""
    from rewardkit import RecipeError
    from rewardkit.recipe import load_recipe
    from rewardkit.registry import get_registry

    registry = get_registry()  # the recipes' length penalty is rewardkit-math's
    for name, config in (("arithmetic_grpo_is_vllm", "GRPOISConfig"), ("arithmetic_ppo_vllm", "PPOConfig")):
        path = os.path.join(ROOT, "recipes", "cpu", f"{name}.yaml")
        load_recipe(path, ["~eval"], registry)  # as shipped: valid
        with pytest.raises(RecipeError) as exc:
            load_recipe(path, ["trainer.top_p=0.9"], registry)
        assert f"trainer.{config} rejects these values: top_p=0.9 with use_vllm: vLLM's log-probs are those of " \
               "the truncated distribution" in str(exc.value)


def test_trainer_side_logs_the_raw_ratios_under_sampler_names_and_defers_trls_correction():
    """What grpo_is and PPO call after generation: the weight in the config's mode, the raw figures logged under
    sampler/*; nothing without use_vllm or with TRL's correction switched off; TRL's flag restored after the call."""
    import collections
    import types

    from rewardkit.trainers import sampler_correction

    args = types.SimpleNamespace(vllm_importance_sampling_correction=True, vllm_importance_sampling_mode="token_mask",
                                 vllm_importance_sampling_clip_min=None, vllm_importance_sampling_clip_max=1.5)
    t = types.SimpleNamespace(use_vllm=True, args=args, vllm_importance_sampling_correction=True,
                              accelerator=types.SimpleNamespace(num_processes=1),
                              _metrics={"train": collections.defaultdict(list)})
    w = sampler_correction.weights(t, {"sampling_per_token_logps": SAMPLER}, TRAINER, MASK)
    close(w, [[0.0, 0.5, 0.0]])
    m = t._metrics["train"]
    assert (m["sampler/ratio_max"], m["sampler/capped"]) == ([pytest.approx(2.0)], [pytest.approx(0.5)])
    assert m["sampler/kl"] == [pytest.approx(K3)] and m["sampler/ratio_mean"] == [pytest.approx(1.25)]
    with sampler_correction.deferred(t):
        assert t.vllm_importance_sampling_correction is False
    assert t.vllm_importance_sampling_correction is True
    args.vllm_importance_sampling_correction = False
    assert sampler_correction.weights(t, {"sampling_per_token_logps": SAMPLER}, TRAINER, MASK) is None
