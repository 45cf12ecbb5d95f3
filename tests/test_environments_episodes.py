"""rewardkit's own episode loop for held-out evaluation (rewardkit.episodes), the calculator environment and the
tool_multiplication data, with a scripted stand-in for the model's generate()."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch

from rewardkit import environments as envs
from rewardkit.builtin.models import build_tokenizer
from rewardkit.builtin.tools import Calculator, _factors, episode, tool_multiplication
from rewardkit.episodes import EpisodeFaultError, EpisodeGenerator, tool_use_stats, write_transcripts
from rewardkit.errors import RewardkitError


class Scripted:
    """generate(): answers each rendered conversation by ``policy(text) -> reply``, left-padded like HF does."""

    device = torch.device("cpu")
    training = False

    def __init__(self, tok, policy):
        self.tok, self.policy = tok, policy

    def eval(self):
        return self

    def train(self, mode=True):
        return self

    def generate(self, input_ids, attention_mask, max_new_tokens, **_):
        rows = []
        for ids in input_ids.tolist():
            text = self.tok.decode([t for t in ids if t != self.tok.pad_token_id])
            rows.append(self.tok(self.policy(text), add_special_tokens=False)["input_ids"][:max_new_tokens])
        width = max(len(r) for r in rows)
        pad = [r + [self.tok.pad_token_id] * (width - len(r)) for r in rows]
        return torch.cat([input_ids, torch.tensor(pad, dtype=input_ids.dtype)], 1)


class Broken(Calculator):
    """Its tool fails as an environment does (a sandbox down), whatever the model asked."""

    def mul(self, a: int, b: int) -> str:
        """Multiply.

        Args:
            a: x
            b: y
        """
        raise envs.EnvironmentFault("sandbox down")


def use_tool(text: str) -> str:
    if "<|tool|>" in text:
        return text.rsplit("<|tool|>", 1)[1].split("<|end|>")[0] + "</s>"
    a, b = re.search(r"(\d+)\*(\d+)=", text).groups()
    return f"<|call|>mul{{a:{a},b:{b}}}<|end|></s>"


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(tools=True)


def prompts(n=3):
    data = tool_multiplication(n_train=4, n_test=n, digits=3, seed=1)["test"]
    return [data[i] for i in range(n)]


def test_the_dataset_is_seeded_disjoint_and_its_episodes_render(tok):
    a, b = tool_multiplication(n_train=50, n_test=20, n_val=10, seed=3), tool_multiplication(n_train=50, n_test=20,
                                                                                            n_val=10, seed=3)
    assert list(a["test"]["answer"]) == list(b["test"]["answer"]) and set(a) == {"train", "test", "validation"}
    held = {p[0]["content"] for p in list(a["test"]["prompt"]) + list(a["validation"]["prompt"])}
    assert len(held) == 30 and not held & {p[0]["content"] for p in a["train"]["prompt"]}
    row = a["train"][0]
    text = tok.apply_chat_template(row["prompt"] + row["completion"], tokenize=False)
    x, y = map(int, re.findall(r"\d+", row["prompt"][0]["content"]))
    assert text.endswith(f"<|call|>mul{{a:{x},b:{y}}}<|end|></s><|tool|>{x * y}<|end|><|assistant|>{x * y}</s>")
    with pytest.raises(ValueError, match="digits"):
        tool_multiplication(digits=0)


def test_too_few_distinct_problems_for_the_held_out_splits_is_an_error_naming_digits():
    # in a subprocess: before the check, drawing 300 distinct pairs of 81 looped forever
    code = ("from rewardkit.builtin.tools import _factors\n"
            "try:\n    _factors(1, 0, 300, 0, 10)\nexcept ValueError as exc:\n    print(exc)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.startswith("digits: 1-digit factors make only 81 distinct problems"), done.stderr
    train, test, val = _factors(1, 0, 79, 1, 5)  # every pair held out but one, which training draws from
    assert len(set(test + val)) == 80 and set(train) == {(a, b) for a in range(1, 10) for b in range(1, 10)} - set(
        test + val)
    with pytest.raises(ValueError, match="digits"):
        _factors(1, 0, 81, 0, 1)


def test_the_calculator_refuses_what_is_not_two_integers():
    calc = Calculator()
    calc.reset()
    assert calc.mul(a=12, b=34) == "408"
    for bad in ({"a": "12", "b": 3}, {"a": True, "b": 3}, {"a": 10 ** 10, "b": 1}):
        with pytest.raises(ValueError):
            calc.mul(**bad)
    assert calc.tool_errors == 3


def test_an_episode_calls_the_tool_reads_it_and_answers(tok, tmp_path):
    rows = prompts()
    gen = EpisodeGenerator(Calculator, rows, max_tool_calls=2)
    outs = gen(Scripted(tok, use_tool), tok, [r["prompt"] for r in rows], max_new_tokens=60)
    assert outs == [r["answer"] for r in rows]
    assert [e.calls for e in gen.episodes] == [1, 1, 1]
    assert gen.episodes[0].messages[2] == {"role": "tool", "name": "mul", "content": rows[0]["answer"]}
    assert tool_use_stats(gen.episodes) == {"tool_calls_per_episode": 1.0, "tool_error_rate": 0.0}
    path = write_transcripts(gen.episodes, str(tmp_path / "t.jsonl"), limit=2)
    assert len(open(path).read().splitlines()) == 2


def test_tool_errors_reach_the_model_and_endless_calling_is_cut(tok):
    rows = prompts(2)
    always_bad = lambda text: "<|call|>mul{a:\"x\",b:1}<|end|></s>"  # noqa: E731 - calls forever, badly
    gen = EpisodeGenerator(Calculator, rows, max_tool_calls=3)
    outs = gen(Scripted(tok, always_bad), tok, [r["prompt"] for r in rows], max_new_tokens=400)
    assert [e.calls for e in gen.episodes] == [3, 3]  # then the episode ends, unanswered
    assert "error" in gen.episodes[0].messages[2]["content"] and outs == ["", ""]
    assert tool_use_stats(gen.episodes)["tool_error_rate"] == 1.0


def test_the_token_budget_ends_an_episode_before_a_result_that_would_cross_it(tok):
    rows = prompts(1)
    gen = EpisodeGenerator(Calculator, rows, max_tool_calls=4)
    gen(Scripted(tok, use_tool), tok, [rows[0]["prompt"]], max_new_tokens=22)  # room for the call, not the result
    (e,) = gen.episodes
    assert e.used >= 18 and not any(m["role"] == "tool" for m in e.messages)


def test_an_environment_fault_in_evaluation_is_raised_never_scored(tok):
    rows = prompts(2)
    with pytest.raises(EpisodeFaultError, match="sandbox down") as caught:
        EpisodeGenerator(Broken, rows)(Scripted(tok, use_tool), tok, [r["prompt"] for r in rows], 60)
    assert isinstance(caught.value, RewardkitError)  # the CLI prints it and exits 2, no traceback


def test_the_tokenizers_padding_side_is_restored():
    tok = build_tokenizer(tools=True)
    tok.padding_side = "right"  # what a training stage's tokenizer may use
    rows = prompts(1)
    EpisodeGenerator(Calculator, rows)(Scripted(tok, use_tool), tok, [rows[0]["prompt"]], 60)
    assert tok.padding_side == "right"


def test_ideal_episode_shape():
    call, result, answer = episode(12, 34)
    assert call["tool_calls"][0]["function"] == {"name": "mul", "arguments": {"a": 12, "b": 34}}
    assert result["content"] == answer["content"] == "408"
