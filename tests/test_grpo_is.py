"""grpo_is against TRL's GRPOTrainer: same loss and gradients at μ = 1, same training as num_iterations = k
without reshuffle/early stop; early stopping and its step accounting, including across resume."""

import os
import warnings

import pytest
import torch

from rewardkit import models
from rewardkit.builtin.datasets import arithmetic

warnings.filterwarnings("ignore")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """On a shared 2-core CI box one torch thread is several times faster than two for these tiny models."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def setup(registry):
    from transformers import AutoTokenizer

    path = models.resolve("tiny-llama", registry)
    tok = AutoTokenizer.from_pretrained(path)
    return path, tok, arithmetic(n_train=256, n_test=8)["train"]


def shaped_reward(prompts, completions, answer, **kwargs):
    """Dense enough to give non-zero advantages from an untrained model: digits and the exact answer."""
    return [sum(ch.isdigit() for ch in c) / 5 + float(c.strip() == a) for c, a in zip(completions, answer)]


BASE = dict(per_device_train_batch_size=8, num_generations=4, max_completion_length=4, learning_rate=3e-3,
            report_to="none", save_strategy="no", logging_steps=1, bf16=False, seed=0, beta=0.05,
            disable_tqdm=True)


def make(setup, tmp_path, ours=True, **kw):
    from trl import GRPOConfig, GRPOTrainer

    from rewardkit.trainers.grpo_is import GRPOISConfig, GRPOISTrainer

    path, tok, ds = setup
    peft_config = kw.pop("peft_config", None)
    cfg_cls, tr_cls = (GRPOISConfig, GRPOISTrainer) if ours else (GRPOConfig, GRPOTrainer)
    args = cfg_cls(output_dir=str(tmp_path / ("ours" if ours else "trl")), **{**BASE, **kw})
    return tr_cls(model=path, args=args, train_dataset=ds, processing_class=tok, reward_funcs=[shaped_reward],
                  peft_config=peft_config)


def synthetic_batch(model, B=8, P=6, T=5, seed=0):
    """An off-policy batch: random prompts/completions with ragged masks, old and reference log-probs that
    differ from the current policy enough that both clip sides are active."""
    g = torch.Generator().manual_seed(seed)
    prompt_ids = torch.randint(8, 100, (B, P), generator=g)
    completion_ids = torch.randint(8, 100, (B, T), generator=g)
    completion_mask = torch.ones(B, T, dtype=torch.long)
    for i, n in enumerate(torch.randint(1, T + 1, (B,), generator=g).tolist()):
        completion_mask[i, n:] = 0
    with torch.no_grad():
        out = model(input_ids=torch.cat([prompt_ids, completion_ids], 1))
        logits = out.logits[:, P - 1:-1]
        logp = torch.log_softmax(logits.float(), -1).gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)
    return {
        "prompt_ids": prompt_ids, "prompt_mask": torch.ones(B, P, dtype=torch.long),
        "completion_ids": completion_ids, "completion_mask": completion_mask,
        "advantages": torch.randn(B, generator=g),
        "old_per_token_logps": logp + 0.4 * torch.randn(B, T, generator=g),
        "ref_per_token_logps": logp + 0.3 * torch.randn(B, T, generator=g),
        "num_items_in_batch": completion_mask.sum(),
    }


@pytest.fixture(scope="module")
def pair(setup, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pair")
    ours = make(setup, tmp, ours=True, rollout_epochs=1, epsilon_high=0.28)
    trl = make(setup, tmp, ours=False, epsilon_high=0.28)
    for t in (ours, trl):
        t.current_gradient_accumulation_steps = 1  # set by the training loop; compute_loss is called directly here
    return ours, trl


def loss_and_grads(trainer, batch):
    trainer.model.train()
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("old", [True, False], ids=["off_policy", "on_policy"])
def test_mu1_loss_and_gradients_match_trl(pair, loss_type, level, old):
    """Equal to TRL's loss and gradients; at sequence level (GSPO) without the KL term, which grpo_is weights by
    the token ratio (test_kl_term_uses_the_token_ratio_at_sequence_level)."""
    ours, trl = pair
    for t in (ours, trl):
        t.loss_type, t.importance_sampling_level = loss_type, level
        t.beta = 0.0 if level == "sequence" else BASE["beta"]
    batch = synthetic_batch(trl.model)
    if not old:  # TRL's μ = 1 aligned case: no old log-probs, ratio = 1 with the policy's own detached log-probs
        del batch["old_per_token_logps"]
    ours.buffer.cursor = (0, 0)
    l_ours, g_ours = loss_and_grads(ours, batch)
    l_trl, g_trl = loss_and_grads(trl, batch)
    assert torch.allclose(l_ours, l_trl, atol=1e-6, rtol=0), (l_ours.item(), l_trl.item())
    assert g_ours.keys() == g_trl.keys() and g_ours
    worst = max((g_ours[k] - g_trl[k]).abs().max().item() for k in g_ours)
    assert worst <= 1e-6, worst
    if old and loss_type == "grpo" and level == "token":
        assert ours._metrics["train"]["clip_ratio/region_mean"][-1] > 0  # the test exercises clipping


def test_kl_term_uses_the_token_ratio_at_sequence_level(pair):
    """The KL correction k·ρ is unbiased with the token ratio ρ_t (rewardkit/algorithms/kl.py), so under GSPO's
    sequence-level policy ratio grpo_is still weights the KL term by ρ_t: its contribution to loss and gradients
    is the same at both levels (TRL multiplies by the sequence ratio there)."""
    ours, _ = pair
    batch = synthetic_batch(ours.model)
    ours.buffer.cursor = (0, 0)

    def kl_part(level):
        ours.importance_sampling_level = level
        ours.beta = BASE["beta"]
        with_kl = loss_and_grads(ours, batch)
        ours.beta = 0.0
        without = loss_and_grads(ours, batch)
        ours.beta = BASE["beta"]
        return with_kl[0] - without[0], {k: with_kl[1][k] - without[1][k] for k in with_kl[1]}

    (l_tok, g_tok), (l_seq, g_seq) = kl_part("token"), kl_part("sequence")
    ours.importance_sampling_level = "token"
    assert abs(l_tok.item()) > 1e-4 and torch.allclose(l_tok, l_seq, atol=1e-7)
    assert max((g_tok[k] - g_seq[k]).abs().max().item() for k in g_tok) <= 1e-6


@pytest.mark.parametrize("option", ["entropy_coef", "off_policy_mask_threshold"])
def test_trls_entropy_bonus_and_off_policy_mask_are_in_grpo_is(pair, option):
    """TRL's loss has the entropy bonus and DeepSeek-V3.2's off-policy sequence mask; grpo_is calls TRL's loss, so
    with either set it still equals TRL's (and differs from the loss without it: the option acts)."""
    ours, trl = pair
    batch = synthetic_batch(trl.model, seed=2)
    ours.buffer.cursor = (0, 0)
    for t in (ours, trl):
        t.loss_type, t.importance_sampling_level, t.beta = "dapo", "token", BASE["beta"]
    plain = loss_and_grads(ours, batch)[0]
    try:
        for t in (ours, trl):
            if option == "entropy_coef":
                t.entropy_coef, t._entropy_bonus_enabled = 0.5, True
            else:
                t.off_policy_mask_threshold = 1e-3
        (l_ours, g_ours), (l_trl, g_trl) = loss_and_grads(ours, batch), loss_and_grads(trl, batch)
    finally:
        for t in (ours, trl):
            t.entropy_coef, t._entropy_bonus_enabled, t.off_policy_mask_threshold = 0.0, False, None
    assert torch.allclose(l_ours, l_trl, atol=1e-6, rtol=0) and abs((l_ours - plain).item()) > 1e-4
    assert max((g_ours[k] - g_trl[k]).abs().max().item() for k in g_ours) <= 1e-6


def test_kl_in_the_reward_is_a_reward_to_go_in_the_advantage(setup, tmp_path):
    """kl_placement: reward (k1): the rollout's per-token advantages are Â − β·Σ_{t'≥t} k1_{t'} with k1 = log π_old −
    log π_ref, so consecutive tokens differ by β·k1; the loss gets no KL term."""
    trainer = make(setup, tmp_path, rollout_epochs=1, kl_placement="reward", kl_estimator="k1", beta=0.5)
    with torch.no_grad():  # move the policy off its reference (TRL's frozen copy) so k1 is not 0
        g = torch.Generator().manual_seed(0)
        for p in trainer.model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    trainer.model.train()
    trainer._prepare_inputs(None)
    r = trainer.buffer.batch
    adv, mask = r["advantages"], r["completion_mask"].float()
    k1 = (r["old_per_token_logps"] - r["ref_per_token_logps"]) * mask
    assert adv.shape == mask.shape and k1.abs().max() > 1e-3
    step = (adv[:, :-1] - adv[:, 1:]) * mask[:, 1:]  # = −β·k1_t where token t+1 is real
    assert torch.allclose(step, -0.5 * k1[:, :-1] * mask[:, 1:], atol=1e-5)
    assert trainer._metrics["train"]["kl"][-1] == pytest.approx((k1.sum() / mask.sum()).item(), rel=1e-5)


def test_grpo_is_turns_dropout_off_so_a_rollouts_first_ratio_is_one(setup, tmp_path):
    """LoRA dropout on: with TRL's default (dropout on) the old log-probs and the update see different functions
    and the first minibatch's importance ratio is not 1; grpo_is's default turns dropout off."""
    from peft import LoraConfig

    peft = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.5, target_modules="all-linear", task_type="CAUSAL_LM",
                      init_lora_weights=False)  # random B: dropout acts from the start
    ranges = {}
    for off in (True, False):
        t = make(setup, tmp_path / str(off), rollout_epochs=2, max_steps=1, disable_dropout=off, peft_config=peft)
        t.train()
        first = t.epoch_history[0]
        ranges[off] = (first["ratio_min"], first["ratio_max"])
    assert ranges[True] == (pytest.approx(1.0, abs=1e-6), pytest.approx(1.0, abs=1e-6)), ranges
    assert ranges[False][1] - ranges[False][0] > 1e-3, ranges


def test_a_mixture_of_experts_keeps_trls_router_aux_loss(setup, tmp_path):
    """The loss is TRL's own, so what TRL adds for MoE models (the load-balancing loss of the router) is in ours:
    same loss and gradients as TRL's GRPOTrainer on a tiny Mixtral, and the aux loss is logged."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from rewardkit.builtin.models import build_tokenizer

    tok = build_tokenizer()
    cfg = AutoConfig.for_model("mixtral", vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                               num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                               num_local_experts=4, num_experts_per_tok=2, router_aux_loss_coef=0.5,
                               pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path / "moe")
    tok.save_pretrained(tmp_path / "moe")
    moe = (str(tmp_path / "moe"), tok, setup[2])
    ours, trl = make(moe, tmp_path, rollout_epochs=1), make(moe, tmp_path, ours=False)
    assert ours.aux_loss_enabled and trl.aux_loss_enabled
    batch = synthetic_batch(trl.model)
    for t in (ours, trl):
        t.current_gradient_accumulation_steps = 1
    ours.buffer.cursor = (0, 0)
    (l_ours, g_ours), (l_trl, g_trl) = loss_and_grads(ours, batch), loss_and_grads(trl, batch)
    assert torch.allclose(l_ours, l_trl, atol=1e-6, rtol=0), (l_ours.item(), l_trl.item())
    assert max((g_ours[k] - g_trl[k]).abs().max().item() for k in g_ours) <= 1e-6
    assert ours._metrics["train"]["aux_loss"] and ours._metrics["train"]["aux_loss"][-1] > 0
    assert any("gate" in k for k in g_ours)  # the router is trained by it


def test_other_kl_estimators_change_only_the_penalty(pair):
    """k2 from the registry replaces TRL's k3: the loss moves by exactly β·r·(k2 − k3) aggregated (grpo), r the
    importance ratio TRL's default use_bias_correction_kl multiplies the KL term by."""
    from rewardkit.algorithms.kl import k2, k3

    ours, _ = pair
    ours.loss_type, ours.importance_sampling_level = "grpo", "token"
    batch = synthetic_batch(ours.model, seed=1)
    ours.model.train()
    with torch.no_grad():
        ours.kl_fn = k3
        l3 = ours.compute_loss(ours.model, batch)
        ours.kl_fn = k2
        l2 = ours.compute_loss(ours.model, batch)
        ours.kl_fn = k3
        out = ours.model(input_ids=torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1))
        P = batch["prompt_ids"].shape[1]
        logp = torch.log_softmax(out.logits[:, P - 1:-1].float(), -1).gather(
            -1, batch["completion_ids"].unsqueeze(-1)).squeeze(-1)
    m = batch["completion_mask"].float()
    diff = k2(logp, batch["ref_per_token_logps"]) - k3(logp, batch["ref_per_token_logps"])
    assert ours.args.use_bias_correction_kl
    diff = diff * torch.exp(logp - batch["old_per_token_logps"])
    expected = ours.beta * ((diff * m).sum(-1) / m.sum(-1)).mean()
    assert (l2 - l3).item() == pytest.approx(expected.item(), abs=1e-5)
    assert abs(expected.item()) > 1e-4


def _params(trainer):
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters()}


@pytest.mark.slow
def test_mu_k_without_reshuffle_or_early_stop_matches_trl_num_iterations(setup, tmp_path):
    """Same seed, same prompts, same samples: μ = 2 with reshuffle off and no early_stop_kl trains like TRL's
    num_iterations = 2 (2 rollouts × 2 epochs × 2 minibatches = 8 optimizer steps)."""
    kw = dict(max_steps=8, steps_per_generation=2)
    trl = make(setup, tmp_path, ours=False, num_iterations=2, **kw)
    start = _params(trl)
    trl.train()
    ours = make(setup, tmp_path, ours=True, rollout_epochs=2, reshuffle=False, early_stop_kl=None, **kw)
    ours.train()
    assert ours.rollouts == 2 and [r["epochs_used"] for r in ours.rollout_history] == [2.0, 2.0]
    losses = lambda t: [r["loss"] for r in t.state.log_history if "loss" in r]  # noqa: E731
    assert losses(ours) == pytest.approx(losses(trl), abs=1e-5)
    p_ours, p_trl = _params(ours), _params(trl)
    worst = max((p_ours[k] - p_trl[k]).abs().max().item() for k in p_trl)
    assert worst < 1e-5, worst
    moved = max((p_trl[k] - v).abs().max().item() for k, v in start.items())
    assert moved > 1e-3  # training did change the weights, so the match is not vacuous


@pytest.mark.slow
@pytest.mark.parametrize("early_stop_kl", [1e-12, 1e12], ids=["tiny", "huge"])
def test_early_stop_accounting(setup, tmp_path, early_stop_kl):
    """μ = 2, one optimizer step per epoch: a tiny target retires every rollout at its first reuse (one epoch
    each); a huge one never does (two epochs each). Optimizer steps and the LR schedule are the same."""
    steps = 4
    t = make(setup, tmp_path, rollout_epochs=2, early_stop_kl=early_stop_kl, max_steps=steps)
    t.train()
    assert t.state.global_step == steps
    lrs = [r["learning_rate"] for r in t.state.log_history if "learning_rate" in r]
    assert lrs == pytest.approx([3e-3 * (1 - s / steps) for s in range(steps)])
    finished = t.rollout_history
    if early_stop_kl < 1:
        assert t.rollouts == steps  # one optimizer step per rollout
        assert all(r["early_stop"] and r["epochs_used"] == 1.0 for r in finished) and len(finished) == steps - 1
    else:
        assert t.rollouts == steps // 2
        assert [(r["early_stop"], r["epochs_used"]) for r in finished] == [(False, 2.0)] * 2
    assert t.completions_generated == t.rollouts * 8
    assert sum(r["optimizer_steps"] for r in finished) + (0 if t.buffer.retired else 1) == steps


@pytest.mark.slow
@pytest.mark.parametrize("early_stop_kl", [None, 1e-12], ids=["no_stop", "always_stop"])
def test_resume_continues_the_same_rollout(setup, tmp_path, early_stop_kl):
    """A run checkpointed mid-rollout (step 3 of 2 epochs × 2 steps) and resumed ends where the uninterrupted run
    does: same steps, rollouts, per-rollout epochs and (reshuffled) weights."""
    kw = dict(rollout_epochs=2, steps_per_generation=2, max_steps=4, early_stop_kl=early_stop_kl, save_strategy="steps",
              save_steps=3)
    full = make(setup, tmp_path / "full", **kw)
    full.train()
    ckpt = tmp_path / "full" / "ours" / "checkpoint-3"
    assert (ckpt / "rollout_state.pt").exists()
    resumed = make(setup, tmp_path / "resumed", **kw)
    resumed.train(resume_from_checkpoint=str(ckpt))
    assert resumed.state.global_step == full.state.global_step == 4
    assert resumed.rollouts == full.rollouts
    assert resumed.rollout_history == full.rollout_history
    p_full, p_res = _params(full), _params(resumed)
    assert max((p_full[k] - p_res[k]).abs().max().item() for k in p_full) < 1e-5


def test_config_explains_batch_arithmetic_and_rejects_replay_flags(tmp_path, registry):
    from rewardkit.algorithms.kl import builtin_estimator
    from rewardkit.trainers.grpo_is import GRPOISConfig, GRPOISStage

    with pytest.raises(ValueError, match=r"8 × 1 × 3 = 24 completions.*multiple of 2"):
        GRPOISConfig(output_dir=str(tmp_path), per_device_train_batch_size=8, num_generations=4,
                     steps_per_generation=3, gradient_accumulation_steps=2, bf16=False)
    with pytest.raises(ValueError, match="rollout_epochs: 3"):
        GRPOISConfig(output_dir=str(tmp_path), per_device_train_batch_size=8, num_generations=4, num_iterations=3,
                     bf16=False)
    # estimator names are checked against the registry a recipe is validated with; a trainer built directly,
    # without kl_estimator_fn, takes only the built-ins
    assert "unknown kl_estimator 'k9'" in GRPOISStage.check_args({"kl_estimator": "k9"}, registry)[0]
    with pytest.raises(ValueError, match="kl_estimator 'k9' is not built in.*k3"):
        builtin_estimator("k9")
    with pytest.raises(ValueError, match="a starting beta > 0"):
        GRPOISConfig(output_dir=str(tmp_path), per_device_train_batch_size=8, num_generations=4, beta=0.0,
                     beta_target=0.1, bf16=False)


def test_registered_and_recipes_validate(registry):
    from rewardkit.recipe import load_recipe
    from rewardkit.trainers.grpo_is import GRPOISStage

    assert registry.load("trainers", "grpo_is") is GRPOISStage
    root = os.path.join(os.path.dirname(__file__), "..", "recipes")
    for name in ("cpu/arithmetic_grpo_is_qlora.yaml", "gpu/arithmetic_grpo_is_qwen2.5-1.5b_qlora.yaml"):
        recipe = load_recipe(os.path.join(root, name), registry=registry)
        stage = recipe.stages[-1]
        assert stage.trainer_type == "grpo_is"
        assert stage.model["quantization"]["bits"] == 4 and stage.model["lora"]


@pytest.mark.slow
def test_qlora_recipe_trains_on_cpu(tmp_path, registry):
    """The CPU recipe end to end, shortened: SFT, then 4-bit NF4 base + LoRA grpo_is with β > 0 (reference =
    base with the adapter disabled, no second model)."""
    pytest.importorskip("bitsandbytes")
    from rewardkit.pipeline import run
    from rewardkit.recipe import load_recipe

    path = os.path.join(os.path.dirname(__file__), "..", "recipes", "cpu", "arithmetic_grpo_is_qlora.yaml")
    recipe = load_recipe(path, [f"output_dir={tmp_path}", "stages.sft.trainer.max_steps=2", "~stages.sft.early_stop",
                                "stages.grpo_is.trainer.max_steps=4", "stages.grpo_is.trainer.logging_steps=1",
                                "~eval"], registry)
    summary = run(recipe, registry)
    assert summary["stages"][-1]["steps"] == 4
    rows = [__import__("json").loads(x) for x in open(tmp_path / "grpo_is" / "log.jsonl")]
    assert any("kl" in r for r in rows) and any("rollout/approx_kl" in r for r in rows)
    assert os.path.isdir(tmp_path / "grpo_is" / "model" / "adapter")
