"""rewardkit.vllm_sync without vLLM: the weights it sends and the error when a recipe asks for vLLM it lacks."""

import os
import types

import pytest

from rewardkit import vllm_sync

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_tied_output_embedding_is_sent_right_after_the_input_embedding():
    named = [("model.embed_tokens.weight", "E"), ("model.norm.weight", "N")]
    tied = types.SimpleNamespace(tie_word_embeddings=True)
    untied = types.SimpleNamespace(tie_word_embeddings=False)
    assert list(vllm_sync.checkpoint_weights(iter(named), tied)) == [
        ("model.embed_tokens.weight", "E"), ("lm_head.weight", "E"), ("model.norm.weight", "N")]
    assert list(vllm_sync.checkpoint_weights(iter(named), untied)) == named


def test_weights_are_passed_on_lazily():
    """TRL's PEFT iterator unmerges the adapter in place once exhausted: nothing may be read ahead."""
    seen = []

    def named():
        for name in ("model.embed_tokens.weight", "model.norm.weight"):
            seen.append(name)
            yield name, name

    out = vllm_sync.checkpoint_weights(named(), types.SimpleNamespace(tie_word_embeddings=True))
    assert next(out)[0] == "model.embed_tokens.weight" and seen == ["model.embed_tokens.weight"]


def test_use_vllm_without_vllm_installed_is_a_recipe_error(monkeypatch):
    from rewardkit.errors import RecipeError

    monkeypatch.setattr(vllm_sync, "available", lambda: False)
    with pytest.raises(RecipeError, match="trainer.use_vllm: vLLM is not installed"):
        with vllm_sync.colocated(types.SimpleNamespace(use_vllm=True, vllm_mode="colocate")):
            pass
    with vllm_sync.colocated(types.SimpleNamespace(use_vllm=False)):
        pass


def test_the_engine_is_built_in_the_policys_dtype():
    import torch

    assert vllm_sync.dtype_name(torch.nn.Linear(2, 2)) == "float32"
    assert vllm_sync.dtype_name(torch.nn.Linear(2, 2).to(torch.bfloat16)) == "bfloat16"
    assert vllm_sync.engine_kwargs("m")["dtype"] == "float32"


def test_a_stage_asking_for_vllm_where_it_is_missing_is_refused_before_the_run(monkeypatch):
    from rewardkit import engines

    stage = types.SimpleNamespace(name="grpo", trainer_args={"use_vllm": True}, early_stop=None, model={})
    other = types.SimpleNamespace(name="sft", trainer_args={}, early_stop=None, model={})
    recipe = types.SimpleNamespace(stages=[other, stage], eval=None)
    monkeypatch.setattr(vllm_sync, "available", lambda: False)
    assert engines.vllm_problems(recipe) == [
        "stages.grpo.trainer.use_vllm: vLLM is not installed in this Python environment; run in the one "
        "`.ci/setup` creates (.venv-vllm/bin/rewardkit) or set use_vllm: false"]
    assert engines.vllm_problems(recipe) == [p for p in engines.problems(recipe) if "vllm" in p]
    monkeypatch.setattr(vllm_sync, "available", lambda: True)
    assert engines.vllm_problems(recipe) == []


def test_stop_engine_shuts_a_running_engine_down_once(monkeypatch):
    calls = []
    monkeypatch.setattr(vllm_sync, "shutdown", lambda llm, process_group: calls.append((llm, process_group)))
    generation = types.SimpleNamespace(llm="engine", accelerator=types.SimpleNamespace(num_processes=1))
    trainer = types.SimpleNamespace(vllm_generation=generation)
    vllm_sync.stop_engine(trainer)
    vllm_sync.stop_engine(trainer)  # already stopped: nothing to do
    vllm_sync.stop_engine(types.SimpleNamespace())  # a trainer without vLLM
    assert calls == [("engine", True)] and generation.llm is None


def _run_a_stage_whose_training_raises(error, stop_engine, tmp_path, registry, monkeypatch):
    """The quick start (tiny) with TRL's train() raising ``error`` and ``vllm_sync.stop_engine`` replaced; the
    error the run raised."""
    import transformers

    from rewardkit.pipeline import run
    from rewardkit.recipe import load_recipe

    def train(self, *args, **kwargs):
        raise error

    monkeypatch.setattr(vllm_sync, "stop_engine", stop_engine)
    monkeypatch.setattr(transformers.Trainer, "train", train)
    recipe = load_recipe(os.path.join(REPO, "recipes", "quickstart.yaml"),
                         [f"output_dir={tmp_path / 'out'}", "~eval", "~stages.sft.early_stop",
                          "data.params.n_train=64"], registry=registry)
    with pytest.raises(type(error)) as raised:
        run(recipe, registry)
    return raised.value


def test_a_stage_whose_training_raises_stops_its_engine_before_the_error_goes_on(tmp_path, builtin_registry,
                                                                              monkeypatch):
    """A run used as a library (a sweep, a notebook) goes on after a failed stage: its vLLM engine must not stay
    up beside the next one. (On training's normal end the trainer's callback stops it; tests/test_vllm*.py.)"""
    import transformers

    stopped = []
    error = _run_a_stage_whose_training_raises(RuntimeError("the engine died"), stopped.append, tmp_path,
                                               builtin_registry, monkeypatch)
    assert str(error) == "the engine died"
    assert len(stopped) == 1 and isinstance(stopped[0], transformers.Trainer)


def test_an_engine_that_cannot_be_stopped_does_not_hide_the_stages_error(tmp_path, builtin_registry, monkeypatch,
                                                                         capsys):
    def stop(trainer):
        raise RuntimeError("the engine is already gone")

    error = _run_a_stage_whose_training_raises(ValueError("the stage's own error"), stop, tmp_path,
                                               builtin_registry, monkeypatch)
    assert str(error) == "the stage's own error"
    assert "could not stop the stage's vLLM engine: RuntimeError: the engine is already gone" in capsys.readouterr().out


def _lora_policy(registry, **lora):
    """The tiny Llama with a LoRA adapter (peft), as TRL builds a LoRA policy."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from rewardkit import models

    base = AutoModelForCausalLM.from_pretrained(models.resolve("tiny-llama", registry), dtype="float32")
    return get_peft_model(base, LoraConfig(**{"r": 8, "lora_alpha": 16, "target_modules": "all-linear", **lora}))


def test_a_lora_adapter_vllm_cannot_carry_is_merged_instead_and_says_why(registry):
    """vLLM's LoRA has no DoRA, no adapter biases, no modules_to_save on a causal LM, one r and alpha per adapter,
    and knows nothing of other trainable weights; a plain adapter is served as one, PPO's critic aside."""
    import torch

    from rewardkit import vllm_lora

    plain = _lora_policy(registry)
    assert vllm_lora.unsupported(plain) is None
    assert vllm_lora.engine_kwargs(plain) == {"enable_lora": True, "max_loras": 1, "max_lora_rank": 8}
    assert vllm_lora.engine_kwargs(_lora_policy(registry, r=4))["max_lora_rank"] == 8  # vLLM's ranks: 1, 8, 16, ...
    assert "sharded" in vllm_lora.unsupported(plain, sharded=True)
    assert "DoRA" in vllm_lora.unsupported(_lora_policy(registry, use_dora=True))
    assert "bias: all" in vllm_lora.unsupported(_lora_policy(registry, bias="all"))
    assert "modules_to_save ['lm_head']" in vllm_lora.unsupported(_lora_policy(registry, modules_to_save=["lm_head"]))
    assert "rank_pattern" in vllm_lora.unsupported(_lora_policy(registry, rank_pattern={"q_proj": 4}))
    plain.critic = torch.nn.Linear(2, 1)  # PPO's value head: trainable, never served
    assert vllm_lora.unsupported(plain, ("critic.",)) is None
    assert "outside the adapter (critic.weight, ...)" in vllm_lora.unsupported(plain)


def test_the_adapter_is_written_as_peft_saves_it(registry, tmp_path):
    """What vLLM loads: PEFT's file names and tensor names, the adapter's current weights."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from rewardkit import models, vllm_lora

    policy = _lora_policy(registry)
    lora_b = next(p for n, p in policy.named_parameters() if "lora_B" in n)
    lora_b.data.fill_(0.5)
    vllm_lora.write_adapter(policy, str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["adapter_config.json", "adapter_model.safetensors"]
    base = AutoModelForCausalLM.from_pretrained(models.resolve("tiny-llama", registry), dtype="float32")
    reloaded = PeftModel.from_pretrained(base, str(tmp_path))
    assert all(p.equal(q) for p, q in zip(policy.parameters(), reloaded.parameters()))


def test_vllm_lora_adapter_is_a_checked_field_of_the_rl_trainers(registry):
    from rewardkit.trainers.grpo_is import GRPOISStage
    from rewardkit.trainers.ppo import PPOStage
    from rewardkit.trainers.trl_stages import GRPOStage

    for stage in (GRPOStage, GRPOISStage, PPOStage):
        assert stage.check_args({"vllm_lora_adapter": False}, registry) == []
        assert "vllm_lora_adapter" in " ".join(stage.check_args({"vllm_lora_adapter": "no"}, registry))


def test_an_adapter_vllm_refuses_at_the_first_sync_is_merged_from_then_on(monkeypatch):
    """A target module vLLM's model cannot wrap shows only when vLLM loads the adapter: that first sync, and every
    later one, merges instead (with the reason), and the adapter's directory goes."""
    import torch

    from rewardkit import vllm_generation

    def refuse(llm):
        raise ValueError("expected target modules in {...} but received ['embed_tokens']")

    pushed, closed = [], []
    monkeypatch.setattr(vllm_sync, "push_weights", lambda llm, weights: pushed.append(list(weights)) or 0.5)
    gen = object.__new__(vllm_generation.SyncedVLLMGeneration)  # its state, without an engine
    gen.mode, gen.enable_sleep_mode, gen.llm = "colocate", False, "engine"
    gen.model = torch.nn.Module()
    gen.model.config = types.SimpleNamespace(tie_word_embeddings=False)
    gen.adapter = types.SimpleNamespace(request=None, push=refuse, close=lambda: closed.append(True))
    gen._iter_named_params = lambda: iter([("model.norm.weight", "N"), ("critic.head.weight", "C")])
    gen.sync_metrics = {"vllm/sync_seconds": []}
    with pytest.warns(UserWarning, match=r"merged .* instead .*: vLLM refused it: expected target modules"):
        gen.sync_weights()
    gen.sync_weights()
    assert gen.adapter is None and closed == [True]
    assert pushed == [[("model.norm.weight", "N")]] * 2 and gen.sync_metrics == {"vllm/sync_seconds": [0.5, 0.5]}
