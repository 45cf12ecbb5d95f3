"""Dynamic sampling (DAPO) for grpo and grpo_is: zero-variance groups are dropped and refilled from fresh prompts,
the merged rollout is padded correctly, bad settings are explained, and the refill stream resumes."""

import warnings

import pytest
import torch

from rewardkit import models
from rewardkit.builtin.datasets import arithmetic
from rewardkit.trainers.dynamic_sampling import merge_rollouts, zero_signal_groups

warnings.filterwarnings("ignore")


def test_zero_signal_groups_follow_trls_zero_std_rule():
    w = torch.tensor([1.0, 1.0])
    r = torch.tensor([[1.0, 0.0], [1.0, 0.0],  # group 0: constant sum → no signal
                      [1.0, 0.0], [0.0, 0.0],  # group 1: varies
                      [float("nan")] * 2, [2.0, 0.0],  # group 2: one scorable completion → no signal
                      [0.0, 1.0], [1.0, 0.0]])  # group 3: sums equal (1, 1), functions differ
    assert zero_signal_groups(r, w, 2).tolist() == [True, False, True, True]
    # normalize_then_sum normalises each function in its group: group 3 carries signal there
    assert zero_signal_groups(r, w, 2, "normalize_then_sum").tolist() == [True, False, True, False]
    # a zero weight removes a function's variance from the sum
    assert zero_signal_groups(r, torch.tensor([0.0, 1.0]), 2).tolist() == [True, True, True, False]


def test_merge_keeps_chosen_groups_and_pads_prompts_left_completions_right():
    a = {"prompt_ids": torch.tensor([[5, 6], [5, 6], [7, 8], [7, 8]]), "prompt_mask": torch.ones(4, 2),
         "completion_ids": torch.tensor([[1], [2], [3], [4]]), "completion_mask": torch.ones(4, 1),
         "advantages": torch.tensor([1.0, -1.0, 0.0, 0.0]), "num_items_in_batch": torch.tensor(4)}
    b = {"prompt_ids": torch.tensor([[9, 9, 9], [9, 9, 9]]), "prompt_mask": torch.ones(2, 3),
         "completion_ids": torch.tensor([[1, 2, 3], [4, 5, 6]]), "completion_mask": torch.ones(2, 3),
         "advantages": torch.tensor([0.5, -0.5]), "num_items_in_batch": torch.tensor(6)}
    m = merge_rollouts([(a, [0]), (b, [0])], num_generations=2, pad_token_id=0)
    assert m["prompt_ids"].tolist() == [[0, 5, 6], [0, 5, 6], [9, 9, 9], [9, 9, 9]]
    assert m["prompt_mask"].tolist() == [[0, 1, 1], [0, 1, 1], [1, 1, 1], [1, 1, 1]]
    assert m["completion_ids"].tolist() == [[1, 0, 0], [2, 0, 0], [1, 2, 3], [4, 5, 6]]
    assert m["completion_mask"].tolist() == [[1, 0, 0], [1, 0, 0], [1, 1, 1], [1, 1, 1]]
    assert m["advantages"].tolist() == [1.0, -1.0, 0.5, -0.5]
    assert "num_items_in_batch" not in m  # a global count: the trainer recomputes it
    with pytest.raises(ValueError, match="pixel_values"):
        merge_rollouts([({**a, "pixel_values": torch.zeros(4, 3)}, [0])], 2, 0)


def test_bad_settings_are_explained_at_validation(registry):
    from types import SimpleNamespace

    from rewardkit.trainers.dynamic_sampling import DynamicSamplingConfig
    from rewardkit.trainers.grpo_is import GRPOISStage
    from rewardkit.trainers.trl_stages import GRPOStage

    for stage in (GRPOStage, GRPOISStage):
        problems = " ".join(stage.check_args({"dynamic_sampling": True, "dynamic_sampling_max_rounds": 0}, registry))
        assert "dynamic_sampling_max_rounds must be >= 1" in problems, (stage, problems)
        assert "not a field" in " ".join(stage.check_args({"dynamic_sampling_rounds": 2}, registry))
        assert not stage.check_args({"dynamic_sampling": True, "per_device_train_batch_size": 8,
                                     "num_generations": 4}, registry)
    # with 2 processes of 6 rows each, a group of 4 would straddle two processes (one process cannot be
    # made to hold that at validation: the check is on the per-process rollout)
    two_procs = SimpleNamespace(dynamic_sampling=True, dynamic_sampling_max_rounds=2, per_device_train_batch_size=6,
                                steps_per_generation=1, num_generations=4)
    assert "multiple of num_generations" in " ".join(DynamicSamplingConfig.dynamic_sampling_problems(two_procs))


@pytest.fixture(scope="module")
def setup(registry):
    from transformers import AutoTokenizer

    path = models.resolve("tiny-llama", registry)
    return path, AutoTokenizer.from_pretrained(path), arithmetic(n_train=256, n_test=8)["train"]


def half_constant(prompts, completions, answer, **kwargs):
    """Prompts with an even answer get the same reward whatever the completion (zero variance); the others a
    dense one that differs between completions."""
    return [1.0 if int(a) % 2 == 0 else sum(ch.isdigit() for ch in c) / 5 + 0.1 * len(c) + float(c.strip() == a)
            for c, a in zip(completions, answer)]


def constant(prompts, completions, **kwargs):
    return [1.0] * len(completions)


def make(setup, tmp_path, trainer="grpo", reward=half_constant, **kw):
    from rewardkit.trainers.dynamic_sampling import DynamicSamplingGRPOConfig, DynamicSamplingGRPOTrainer
    from rewardkit.trainers.grpo_is import GRPOISConfig, GRPOISTrainer

    path, tok, ds = setup
    base = dict(per_device_train_batch_size=16, num_generations=4, max_completion_length=4, learning_rate=1e-3,
                report_to="none", save_strategy="no", logging_steps=1, bf16=False, seed=0, beta=0.0,
                disable_tqdm=True, max_steps=3, gradient_checkpointing=False)
    if trainer == "grpo":
        cfg_cls, tr_cls = DynamicSamplingGRPOConfig, DynamicSamplingGRPOTrainer
    else:
        cfg_cls, tr_cls = GRPOISConfig, GRPOISTrainer
        base.update(rollout_epochs=2, steps_per_generation=2)
    args = cfg_cls(output_dir=str(tmp_path / trainer), **{**base, **kw})
    tr = tr_cls(model=path, args=args, train_dataset=ds, processing_class=tok, reward_funcs=[reward])
    rollouts = []
    inner = tr._generate_and_score_completions

    def spy(inputs):
        out = inner(inputs)
        if tr.model.training:
            rollouts.append(out)
        return out

    tr._generate_and_score_completions = spy
    return tr, rollouts


def group_signal(rollout, g=4) -> list[bool]:
    return (rollout["advantages"].view(-1, g).abs() > 1e-3).any(-1).tolist()


@pytest.mark.parametrize("trainer", ["grpo", "grpo_is"])
def test_every_trained_group_carries_signal_and_the_refills_are_logged(setup, tmp_path, trainer):
    torch.manual_seed(0)
    off, off_rollouts = make(setup, tmp_path / "off", trainer)
    off.train()
    assert not all(s for r in off_rollouts for s in group_signal(r))  # without it, some groups carry nothing

    torch.manual_seed(0)
    on, rollouts = make(setup, tmp_path / "on", trainer, dynamic_sampling=True, dynamic_sampling_max_rounds=8)
    on.train()
    assert rollouts and all(all(group_signal(r)) for r in rollouts)
    for r in rollouts:
        assert r["completion_ids"].shape[0] == on.args.generation_batch_size
        assert int(r["num_items_in_batch"]) == int(r["completion_mask"].sum())
    t = on.dynamic_sampling_totals
    assert t["rollouts"] == len(rollouts) and t["dropped_groups"] > 0 and t["extra_completions"] > 0
    assert t["rounds"] > t["rollouts"] and t["filled_zero_var_groups"] == 0
    logged = [h for h in on.state.log_history if "dynamic_sampling/dropped_groups" in h]
    assert logged and sum(h["dynamic_sampling/extra_completions"] for h in logged) > 0
    if trainer == "grpo_is":
        assert on.completions_generated == on.rollouts * 32 + t["extra_completions"]
    # TRL's reward metrics describe the groups trained on (all with signal here), the discarded rounds are logged
    # apart: before, every round's metrics went into the means as if trained on
    hist = [h for h in on.state.log_history if "dynamic_sampling/generated_frac_reward_zero_std" in h]
    assert hist and all(h["frac_reward_zero_std"] == 0.0 for h in hist)
    assert any(h["dynamic_sampling/generated_frac_reward_zero_std"] > 0.0 for h in hist)
    assert any(h["dynamic_sampling/generated_reward"] != h["reward"] for h in hist)


def test_reward_metrics_by_hand():
    """Two groups of 2, one reward function with weight 2: group 0 scores 1, 1 (no signal), group 1 scores 0 and
    None (one scorable completion: no signal either)."""
    from rewardkit.trainers.dynamic_sampling import reward_metrics

    rows = torch.tensor([[1.0], [1.0], [0.0], [float("nan")]])
    m = reward_metrics(rows, torch.tensor([2.0]), ["acc"], num_generations=2)
    assert m["rewards/acc/mean"] == pytest.approx(2 / 3) and m["reward"] == pytest.approx(4 / 3)
    assert m["frac_reward_zero_std"] == 1.0
    assert m["reward_std"] == pytest.approx(torch.tensor([2.0, 2.0, 0.0]).std().item())


def test_out_of_rounds_the_rollout_is_completed_with_zero_variance_groups(setup, tmp_path):
    tr, rollouts = make(setup, tmp_path, reward=constant, dynamic_sampling=True, dynamic_sampling_max_rounds=2,
                        max_steps=2)
    tr.train()
    t = tr.dynamic_sampling_totals
    assert t["rounds"] == 2 * t["rollouts"] and t["filled_zero_var_groups"] == 4 * t["rollouts"]
    assert all(r["completion_ids"].shape[0] == 16 and not any(group_signal(r)) for r in rollouts)


def test_refill_stream_position_resumes(setup, tmp_path):
    full, _ = make(setup, tmp_path / "full", dynamic_sampling=True, max_steps=4, lr_scheduler_type="constant")
    full.train()
    first, _ = make(setup, tmp_path / "cut", dynamic_sampling=True, max_steps=4, save_strategy="steps",
                    lr_scheduler_type="constant",
                    save_steps=2)
    first.args.max_steps = 2
    first.train()
    resumed, _ = make(setup, tmp_path / "cut", dynamic_sampling=True, max_steps=4, lr_scheduler_type="constant")
    resumed.train(resume_from_checkpoint=str(tmp_path / "cut" / "grpo" / "checkpoint-2"))
    assert first._ds_stream.position > 0
    assert resumed._ds_stream.position == full._ds_stream.position
    assert resumed.dynamic_sampling_totals["rollouts"] == full.dynamic_sampling_totals["rollouts"] == 4


def test_a_recipe_turns_it_on_and_the_summary_reports_it(tmp_path, registry, capsys):
    from rewardkit.pipeline import run
    from rewardkit.recipe import load_recipe

    path = tmp_path / "ds.yaml"
    path.write_text(f"""
model: {{name: tiny-llama}}
data: {{name: arithmetic, params: {{n_train: 64, n_test: 8, max_operand: 10}}}}
output_dir: {tmp_path / "run"}
trainer: {{type: grpo, max_steps: 2, per_device_train_batch_size: 8, num_generations: 4, max_completion_length: 4,
           dynamic_sampling: true, dynamic_sampling_max_rounds: 2, save_strategy: "no", logging_steps: 1}}
rewards: [{{name: exact_match}}]
""")
    summary = run(load_recipe(str(path), registry=registry), registry)
    ds = summary["stages"][0]["dynamic_sampling"]
    # an untrained model gets nothing right: every group has zero variance, refills cannot help, the rollout is
    # completed with zero-variance groups and the step still runs
    assert ds["rollouts"] == 2 and ds["rounds"] == 4 and ds["filled_zero_var_groups"] == 4
    assert "dynamic sampling: 4 generation rounds for 2 rollouts" in capsys.readouterr().out
