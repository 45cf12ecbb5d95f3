"""benchmarks/gpu_memory.py (issue 26), kept from rotting without a GPU: its whole logic at a toy shape on CPU, the
Qwen2.5-1.5B shape it builds, its exit status without CUDA, and its one device command, the same in the docs. The
GPU run itself is no test: CI has no GPU."""

import importlib.util
import json
import os
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bench():
    spec = importlib.util.spec_from_file_location("gpu_memory_bench", os.path.join(REPO, "benchmarks", "gpu_memory.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def one_thread():
    """On a shared 2-core box one torch thread is several times faster than two for a toy model."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_cuda_without_a_gpu_exits_2_and_says_what_to_do(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exc:
        _bench().main(["--device", "cuda", "--cache", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "sees no CUDA device" in err and "--device cpu --tiny" in err
    assert os.listdir(tmp_path) == []  # nothing built


def test_the_tiny_run_measures_both_configurations_on_cpu(tmp_path, one_thread):
    bench = _bench()
    out = tmp_path / "out" / "gpu_memory.json"
    summary = bench.main(["--device", "cpu", "--tiny", "--in-process", "--cache", str(tmp_path / "cache"),
                          "--out", str(out)])
    assert json.loads(out.read_text())["results"].keys() == {"grpo_is_qlora", "trl_bf16"}
    q, t = summary["results"]["grpo_is_qlora"], summary["results"]["trl_bf16"]
    s = summary["settings"]
    assert (s["batch"], s["num_generations"], s["completion_len"], s["warmup"], s["steps"]) == (4, 2, 4, 2, 2)
    assert q["optimizer_steps"] == t["optimizer_steps"] == len(q["steps"]) == len(t["steps"]) == 4
    assert not q["separate_reference_model"] and t["separate_reference_model"]  # adapter off vs a second copy
    assert 0 < q["trainable_params"] < t["trainable_params"] == summary["model"]["parameters"]
    # TRL generates a batch every step; grpo_is (rollout_epochs 2) every second step, each up to 4 x 4 tokens
    assert [st["generated_tokens"] > 0 for st in t["steps"]] == [True] * 4
    assert [st["generated_tokens"] > 0 for st in q["steps"]] == [True, False, True, False]
    assert all(st["generated_tokens"] <= 16 and st["seconds"] >= st["generate_seconds"] >= 0
               for st in q["steps"] + t["steps"])
    assert q["generated_tokens_per_step"] == sum(st["generated_tokens"] for st in q["steps"][2:]) / 2
    assert q["peak_rss_mib"] > 0 and summary["peak_ratio_qlora_vs_trl"] > 0


def test_the_full_shape_is_qwen2_5_1_5b():
    from rewardkit.builtin.models import build_tokenizer

    bench = _bench()
    config = bench.model_config(bench.QWEN25_15B, build_tokenizer())
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads,
            config.intermediate_size, config.vocab_size) == (1536, 28, 12, 2, 8960, 151936)
    assert config.tie_word_embeddings and config.rope_parameters["rope_theta"] == 1e6
    assert bench.parameter_count(bench.QWEN25_15B) == 1_543_714_304  # Qwen2.5-1.5B's count


def test_the_device_command_fits_one_call_and_is_the_one_in_the_docs():
    bench = _bench()
    command = next(line.strip() for line in bench.__doc__.splitlines() if "pip install" in line)
    assert len(command) <= 2000  # the device tool's limit on a command
    assert "--target /tmp/site .whl/*.whl" in command and "benchmarks/gpu_memory.py" in command
    with open(os.path.join(REPO, "docs", "grpo_is.md"), encoding="utf-8") as f:
        assert command in f.read()
