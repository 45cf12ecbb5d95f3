import os

import pytest

from rewardkit import models


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2"])
def test_embedded_models_build_once_deterministically_and_chat(builtin_registry, name):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = models.resolve(name, builtin_registry)
    assert os.path.isdir(path) and models.resolve(name, builtin_registry) == path  # cached
    tok = AutoTokenizer.from_pretrained(path)
    text = tok.apply_chat_template([{"role": "user", "content": "2+2="}], tokenize=False,
                                   add_generation_prompt=True)
    assert text == "<|user|>2+2=<|end|><|assistant|>"
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text and len(ids) == 7  # role tokens are single tokens, characters the rest
    model = AutoModelForCausalLM.from_pretrained(path)
    first = next(model.parameters()).detach().clone()
    torch.manual_seed(123)  # the build must not depend on the caller's RNG
    from rewardkit.builtin import models as embedded

    other = os.path.join(os.path.dirname(path), f"rebuild-{name}")
    embedded.build(name, other)
    assert torch.equal(next(AutoModelForCausalLM.from_pretrained(other).parameters()), first)


def test_4bit_lora_gradients_stay_right_after_a_generation_forward(builtin_registry):
    """bitsandbytes 0.50 on an AVX512-BF16 CPU repacks 4-bit weights on an eval-mode no-grad forward and then
    backpropagates through a kernel without autograd (models.keep_4bit_trainable); trainers generate between
    updates, so the gradient after such a forward must equal the gradient of a model that never had one."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    pytest.importorskip("bitsandbytes")
    path = models.resolve("tiny-llama", builtin_registry)
    ids = torch.randint(8, 90, (2, 12), generator=torch.Generator().manual_seed(0))

    def lora_grads(generate_first: bool):
        model = models.load_for_inference(path, {"quantization": {"bits": 4}, "dtype": "float32"},
                                          AutoModelForCausalLM)
        torch.manual_seed(0)
        model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
        assert models.keep_4bit_trainable(model) > 0
        if generate_first:
            model.eval()
            with torch.no_grad():
                model(input_ids=ids)
        model.train()
        model(input_ids=ids, labels=ids).loss.backward()
        return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    fresh, after = lora_grads(False), lora_grads(True)
    assert fresh.keys() == after.keys() and len(fresh) > 0
    for name, g in fresh.items():
        assert torch.allclose(g, after[name], atol=1e-6), name


def test_build_once_builds_on_process_0_only(tmp_path, monkeypatch):
    """Under a launcher only RANK 0 builds a cache directory (transformers 5 writes weights on rank 0 only once
    torch.distributed is up); another rank waits for it and never builds."""
    import threading

    built = []
    path = tmp_path / "cache" / "m"
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(RuntimeError, match="process 1 waited"):
        models.build_once(str(path), built.append, wait_s=0.2)
    timer = threading.Timer(0.3, lambda: path.mkdir(parents=True))
    timer.start()
    assert models.build_once(str(path), built.append, wait_s=10) == str(path) and built == []
    monkeypatch.setenv("RANK", "0")
    other = tmp_path / "cache" / "n"
    models.build_once(str(other), lambda d: open(os.path.join(d, "w"), "w").close())
    assert os.listdir(other) == ["w"] and not [p for p in os.listdir(tmp_path / "cache") if p.startswith(".")]
