"""rewardkit.vllm_sync without vLLM: the weights it sends and the error when a recipe asks for vLLM it lacks."""

import types

import pytest

from rewardkit import vllm_sync


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
