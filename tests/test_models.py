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
