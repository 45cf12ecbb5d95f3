"""PPO on the tiny model (a few steps each): the tool mask is a loss mask, not the attention mask; evaluation runs
PPO's loss; TRL's old-log-prob pass is not repeated; an existing PEFT adapter is its own reference."""

import pytest
import torch


pytest.importorskip("trl")
from trl import GRPOTrainer  # noqa: E402

from rewardkit.trainers.ppo import PPOTrainer
from rewardkit.trainers.ppo_config import PPOConfig  # noqa: E402


def digits(prompts, completions, **kwargs):
    return [sum(ch.isdigit() for ch in c) / 4 for c in completions]


def config(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), max_steps=1, learning_rate=3e-3, per_device_train_batch_size=8,
                steps_per_generation=1, rollout_epochs=1, max_completion_length=4, report_to="none",
                logging_steps=1, bf16=False, gradient_checkpointing=False, seed=0, save_strategy="no",
                disable_tqdm=True)
    return PPOConfig(**{**base, **kw})


def logged(trainer, key):
    return [r[key] for r in trainer.state.log_history if r.get(key) is not None]


class _WithToolMask(GRPOTrainer):
    """Stands for TRL's tool calling: marks completion token 1 of every episode as a tool output."""

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        tool_mask = torch.ones_like(out["completion_mask"])
        tool_mask[:, 1] = 0
        out["tool_mask"] = tool_mask
        self.trl_completion_mask = out["completion_mask"].clone()
        return out


class ToolPPO(PPOTrainer, _WithToolMask):
    pass


def test_tool_mask_is_a_loss_mask_not_an_attention_mask(tiny, registry, tmp_path):
    path, tok, ds = tiny
    trainer = ToolPPO(model=path, reward_funcs=[digits], args=config(tmp_path), train_dataset=ds["train"],
                      processing_class=tok, kl_estimator_fn=registry.kl_estimator("k1"))
    trainer.train()
    rollout = trainer.buffer.batch
    # the attention mask the policy is trained with is TRL's, the one old log-probs and values were computed with
    assert torch.equal(rollout["completion_mask"].sort(0).values, trainer.trl_completion_mask.sort(0).values)
    assert (rollout["loss_mask"][:, 1] == 0).all()
    # so on the first minibatch of a rollout the policy is the old policy: ratio 1, KL(old||new) 0
    assert logged(trainer, "ppo/policy/approx_kl")[0] < 1e-7


def test_evaluation_runs_ppo_loss(tiny, registry, tmp_path):
    path, tok, ds = tiny
    cfg = config(tmp_path, max_steps=2, eval_strategy="steps", eval_steps=2, per_device_eval_batch_size=4)
    trainer = PPOTrainer(model=path, reward_funcs=[digits], args=cfg, train_dataset=ds["train"],
                         eval_dataset=ds["test"], processing_class=tok, kl_estimator_fn=registry.kl_estimator("k1"))
    trainer.train()
    losses = logged(trainer, "eval_loss")
    assert len(losses) == 1 and torch.isfinite(torch.tensor(losses[0]))
    assert logged(trainer, "eval_ppo/loss/value") and logged(trainer, "eval_ppo/score")
    assert len(logged(trainer, "ppo/beta")) == 2  # evaluation did not step the KL controller


def test_no_second_old_logprob_pass(tiny, registry, tmp_path):
    """A rollout spanning 2 optimizer steps: TRL would compute old log-probs (a full forward); PPO's own pass
    gives them with the values, so each episode is scored once by the policy and once by the reference."""
    path, tok, ds = tiny
    trainer = PPOTrainer(model=path, reward_funcs=[digits], args=config(tmp_path, steps_per_generation=2),
                         train_dataset=ds["train"], processing_class=tok, kl_estimator_fn=registry.kl_estimator("k1"))
    rows = []
    inner = trainer._get_per_token_logps_and_entropies

    def counting(model, input_ids, *args, **kwargs):
        if not kwargs.get("compute_entropy", False):  # scoring passes; the loss's pass asks for entropies
            rows.append(input_ids.size(0))
        return inner(model, input_ids, *args, **kwargs)

    trainer._get_per_token_logps_and_entropies = counting
    trainer.train()
    assert sum(rows) == 2 * 16  # 16 episodes: old policy (with values) + reference


def test_existing_adapter_is_its_own_reference(tiny, registry, tmp_path):
    """A PEFT model whose adapter is already trained (non-zero): TRL adds a frozen "ref" copy; the reference must
    be that copy, not the base with adapters disabled, so the first rollout's KL is 0."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    path, tok, ds = tiny
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32),
                           LoraConfig(r=4, lora_alpha=64, target_modules="all-linear", init_lora_weights=False,
                                      task_type="CAUSAL_LM"))
    trainer = PPOTrainer(model=model, reward_funcs=[digits], args=config(tmp_path), train_dataset=ds["train"],
                         processing_class=tok, kl_estimator_fn=registry.kl_estimator("k1"))
    assert "ref" in trainer.model.peft_config
    trainer.train()
    assert logged(trainer, "ppo/kl")[0] == pytest.approx(0.0, abs=1e-6)
    ids = torch.tensor([[5, 6, 7, 8]], device=trainer.model.device)
    with torch.no_grad(), trainer.model.disable_adapter():  # the test can tell: the base is far from the adapter
        base = trainer.model(input_ids=ids).logits
    with torch.no_grad():
        adapted = trainer.model(input_ids=ids).logits
    assert (base - adapted).abs().max() > 0.1
