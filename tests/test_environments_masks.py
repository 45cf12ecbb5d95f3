"""Tool output is never trained on: in each trainer that takes an environment (grpo, grpo_is), TRL's tool loop runs
a real tool, and no gradient reaches the logits that predict the tokens the tool returned; dynamic sampling's merge
and the rollout buffer's minibatches keep each row's tool mask with its tokens.

Generation is scripted (a random tiny model emits no tool calls): every episode calls ``multiply`` on the row's
operands, then answers with what the tool returned; everything after generation is TRL's and rewardkit's code."""

from __future__ import annotations

import re

import pytest
import torch

from rewardkit import environments as envs

TOOL_TEXT = "<|tool|>{}<|end|><|assistant|>"  # what TRL appends after a call: masked


class Multiplier(envs.Environment):
    def reset(self, **row) -> str | None:
        return None

    def multiply(self, a: int, b: int) -> str:
        """Multiply two integers.

        Args:
            a: the first factor
            b: the second factor
        """
        return str(a * b)


def exact(prompts, completions, answer, **kw):
    return [float(c[-1]["content"] == a) for c, a in zip(completions, answer)]


@pytest.fixture(scope="module")
def tools_model(registry):
    from transformers import AutoTokenizer

    from rewardkit import models

    path = models.resolve("tiny-llama-tools", registry)
    return path, AutoTokenizer.from_pretrained(path)


def rows(n=2):
    pairs = [(12, 34), (7, 9), (25, 4), (3, 3)][:n]
    return [{"prompt": [{"role": "user", "content": f"{a}*{b}="}], "answer": str(a * b)} for a, b in pairs]


def scripted(trainer, wrong_every: int = 0):
    """Replaces the trainer's generation: the first turn calls the tool, the turn after a tool result repeats it
    (every ``wrong_every``-th episode answers 0 instead, for reward variance)."""
    tok, count = trainer.processing_class, [0]

    def generate(prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        out = []  # prompts arrive repeated per generation (TRL's sampler): one completion each
        for ids in prompt_ids:
            text = tok.decode(ids)
            if "<|tool|>" in text:
                count[0] += 1
                result = text.rsplit("<|tool|>", 1)[1].split("<|end|>")[0]
                reply = "0" if wrong_every and count[0] % wrong_every == 0 else result
            else:
                a, b = re.search(r"(\d+)\*(\d+)=", text).groups()
                reply = f"<|call|>multiply{{a:{a},b:{b}}}<|end|>"
            out.append(tok(reply + "</s>", add_special_tokens=False)["input_ids"])
        return out, None

    trainer._generate_single_turn = generate


def build(kind, tools_model, tmp_path, **extra):
    from datasets import Dataset

    path, tok = tools_model
    common = dict(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=2, max_steps=1,
                  max_completion_length=64, report_to="none", bf16=False, logging_steps=1, seed=0,
                  max_tool_calling_iterations=envs.DEFAULT_MAX_TOOL_CALLS, **extra)
    if kind == "grpo":
        from rewardkit.trainers.dynamic_sampling import DynamicSamplingGRPOConfig as Config
        from rewardkit.trainers.dynamic_sampling import DynamicSamplingGRPOTrainer as Trainer
    else:
        from rewardkit.trainers.grpo_is import GRPOISConfig as Config
        from rewardkit.trainers.grpo_is import GRPOISTrainer as Trainer
    trainer = Trainer(model=path, args=Config(**common), reward_funcs=[exact], processing_class=tok,
                      train_dataset=Dataset.from_list(rows(4) * 4),
                      environment_factory=envs.EpisodeFactory(Multiplier, 64, None))
    scripted(trainer, wrong_every=2)
    return trainer


def rollout(trainer, n=2):
    trainer.model.train()
    inputs = [r for r in rows(n) for _ in range(trainer.num_generations)]
    return inputs, trainer._generate_and_score_completions(inputs)


def check_tool_tokens_masked(tok, out, inputs):
    """Each row's tool_mask is 0 exactly on the tokens of the tool's result (and its role tokens)."""
    for i, row in enumerate(inputs):
        ids = out["completion_ids"][i][out["completion_mask"][i].bool()]
        mask = out["tool_mask"][i][out["completion_mask"][i].bool()]
        assert tok.decode(ids[mask == 0]) == TOOL_TEXT.format(row["answer"])
        assert tok.decode(ids[mask == 1]).startswith("<|call|>multiply{a:")


def position_grads(trainer, out):
    """|gradient| of the loss at the final hidden state that predicts each completion token: (B, T). (TRL's fused
    head returns log-probs, not logits; the final norm's output at position q feeds only the prediction of token
    q + 1, so its gradient is zero exactly where that prediction is out of the loss.)"""
    model, kept = trainer.model, {}

    def hook(_module, _inp, output):
        output.retain_grad()
        kept["hidden"] = output

    handle = model.model.norm.register_forward_hook(hook)
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train's loop otherwise
    try:
        model.zero_grad()
        trainer.compute_loss(model, out).backward()
    finally:
        handle.remove()
    start, length = out["prompt_ids"].shape[1] - 1, out["completion_ids"].shape[1]
    return kept["hidden"].grad[:, start:start + length].abs().sum(-1)


@pytest.mark.parametrize("kind", ["grpo", "grpo_is"])
def test_no_gradient_reaches_the_tokens_a_tool_returned(kind, tools_model, tmp_path):
    trainer = build(kind, tools_model, tmp_path)
    inputs, out = rollout(trainer)
    check_tool_tokens_masked(tools_model[1], out, inputs)
    out["advantages"] = torch.ones_like(out["advantages"])  # every model token carries a policy gradient
    grads = position_grads(trainer, out)  # (B, T)
    live = out["completion_mask"].bool()
    tool = live & (out["tool_mask"] == 0)
    model_tokens = live & (out["tool_mask"] == 1)
    assert tool.any() and grads[tool].max().item() == 0.0
    assert (grads[model_tokens] > 0).all()


def test_dynamic_sampling_merge_keeps_each_rows_tool_mask(tools_model, tmp_path):
    from rewardkit.trainers.dynamic_sampling import merge_rollouts

    trainer = build("grpo", tools_model, tmp_path)
    inputs, first = rollout(trainer)
    inputs2, second = rollout(trainer, n=2)
    merged = merge_rollouts([(first, [1]), (second, [0])], trainer.num_generations,
                            tools_model[1].pad_token_id)
    g = trainer.num_generations
    check_tool_tokens_masked(tools_model[1], merged, inputs[g:2 * g] + inputs2[:g])


def test_rollout_reuse_minibatches_keep_tool_masks_with_their_tokens(tools_model, tmp_path):
    from rewardkit.trainers.rollout import RolloutBuffer

    trainer = build("grpo", tools_model, tmp_path)
    _, out = rollout(trainer)
    tok = tools_model[1]
    buffer = RolloutBuffer(minibatches=2, epochs=2, reshuffle=True, seed=0)
    buffer.start({k: v for k, v in out.items() if k != "num_items_in_batch"}, 1)
    served = 0
    while not buffer.finished:
        mb = buffer.next()
        for ids, cmask, tmask in zip(mb["completion_ids"], mb["completion_mask"], mb["tool_mask"]):
            ids, tmask = ids[cmask.bool()], tmask[cmask.bool()]
            product = tok.decode(ids[tmask == 1]).split("}")[0]  # the call's operands
            a, b = map(int, re.findall(r"\d+", product))
            assert tok.decode(ids[tmask == 0]) == TOOL_TEXT.format(a * b)
            served += 1
    assert served == 2 * len(out["completion_ids"])


class BrokenMultiplier(Multiplier):
    def multiply(self, a: int, b: int) -> str:
        """Multiply two integers.

        Args:
            a: the first factor
            b: the second factor
        """
        if a == 12:
            raise envs.EnvironmentFault("the worker died")
        return str(a * b)


def test_an_environment_fault_in_trls_loop_never_reaches_the_model_or_the_score(tools_model, tmp_path):
    from datasets import Dataset

    from rewardkit.reward_checks import CheckedReward
    from rewardkit.trainers.dynamic_sampling import DynamicSamplingGRPOConfig, DynamicSamplingGRPOTrainer

    path, tok = tools_model
    reward = envs.guard_rewards([CheckedReward(exact, "exact", "test", {"policy": "skip", "max_rate": 1.0,
                                                                        "fail_fast_first_step": False})])[0]
    args = DynamicSamplingGRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=2,
                                     max_steps=1, max_completion_length=64, report_to="none", bf16=False, seed=0,
                                     max_tool_calling_iterations=2)
    trainer = DynamicSamplingGRPOTrainer(model=path, args=args, reward_funcs=[reward], processing_class=tok,
                                         train_dataset=Dataset.from_list(rows(2) * 4),
                                         environment_factory=envs.EpisodeFactory(BrokenMultiplier, 64, None))
    scripted(trainer)
    inputs, out = rollout(trainer)  # rows 12*34 (faults) and 7*9 (works), two episodes each
    texts = [tok.decode(ids[m.bool()]) for ids, m in zip(out["completion_ids"], out["completion_mask"])]
    assert all("#1" not in t and "worker" not in t for t in texts)  # the rolled-back result is nowhere
    assert texts[0] == "<|call|>multiply{a:12,b:34}<|end|></s>"  # the episode ended at the call
    assert texts[2].endswith("<|tool|>63<|end|><|assistant|>63</s>")
    assert reward.skipped == 2 and reward.seen == 4  # the faulted episodes unjudged, counted by the policy
