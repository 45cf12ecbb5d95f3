"""The environment contract (rewardkit.environments): the episode object's guards, stage validation before any
model loads, what TRL's GRPOTrainer is given, and the tiny tool-calling tokenizer TRL's tool loop accepts."""

from __future__ import annotations

import types

import pytest

from rewardkit import environments as envs
from rewardkit.builtin.models import build_tokenizer
from rewardkit.registry import Registry


class Calculator(envs.Environment):
    """A well-formed environment: one typed, documented tool."""

    def __init__(self, digits: int = 3):
        super().__init__()
        self.digits = digits

    def reset(self, **row) -> str | None:
        self.row = row
        return None

    def multiply(self, a: int, b: int) -> str:
        """Multiply two integers.

        Args:
            a: the first factor
            b: the second factor
        """
        if abs(a) >= 10 ** (2 * self.digits):
            raise ValueError("too large")
        return str(a * b)

    def echo(self, text: str) -> str:
        """Repeat a text.

        Args:
            text: what to repeat
        """
        return text * 3


class Undocumented(envs.Environment):
    def reset(self, **row):
        return None

    def lookup(self, key):  # no type hint, no docstring: transformers cannot build its schema
        return key


class NoTools(envs.Environment):
    def reset(self, **row):
        return None


class AsyncTools(envs.Environment):
    async def fetch(self, key: str) -> str:
        """Look a key up.

        Args:
            key: what to look up
        """
        return key


class Broken(Calculator):
    """Its tool fails as an environment does (a dead worker), whatever the model asked."""

    def multiply(self, a: int, b: int) -> str:
        """Multiply.

        Args:
            a: x
            b: y
        """
        raise envs.EnvironmentFault("worker died")


async def async_tool(x: int) -> int:
    """Add one later.

    Args:
        x: a number
    """
    return x + 1


def make_calculator(digits: int = 3) -> Calculator:
    """A factory function, not a class: validation cannot count its tools before it runs."""
    return Calculator(digits)


def registry() -> Registry:
    r = Registry(entry_points=False)
    r.add("environments", "calculator", Calculator)
    r.add("environments", "undocumented", Undocumented)
    r.add("environments", "no_tools", NoTools)
    r.add("environments", "async_tools", AsyncTools)
    r.add("environments", "calculator_fn", make_calculator)
    return r


def spec(trainer="grpo", environment=None, tools=None, **args):
    return types.SimpleNamespace(trainer_type=trainer, trainer_args=args, environment=environment, tools=tools or [])


def problems(**kw):
    return envs.stage_problems(spec(**kw), registry(), "stages.rl.")


# ----------------------------------------------------------------------------------------------- the episode
def test_tools_are_guarded_counted_cut_and_transcribed():
    env = envs.EpisodeFactory(lambda: Calculator(), episode_tokens=50, max_output_chars=5)()
    env.reset(prompt="p")
    assert env.multiply(a=12, b=34) == "408" and env.tool_calls == 1
    assert env.echo(text="abcd") == "abcda" + envs._CUT_NOTE.format(n=5)
    with pytest.raises(ValueError, match="too large"):  # the model's fault: TRL shows it as the tool's error
        env.multiply(a=10 ** 7, b=1)
    assert (env.tool_calls, env.tool_errors, env.fault) == (3, 1, None)
    assert env.transcript[0] == {"tool": "multiply", "arguments": {"a": 12, "b": 34}, "result": "408"}
    assert "error" in env.transcript[-1]
    env.reset(prompt="q")
    assert (env.tool_calls, env.tool_errors, env.transcript) == (0, 0, [])


def test_an_environment_fault_is_recorded_and_rolled_back_not_raised():
    env = envs.EpisodeFactory(Broken, episode_tokens=20, max_output_chars=None)()
    env.reset()
    out = env.multiply(a=1, b=2)
    assert "worker died" not in out and len(build_tokenizer(tools=True)(out)["input_ids"]) > 20
    assert env.fault == "Broken.multiply: worker died"
    assert env.echo(text="x") == out  # nothing more runs in an unjudged episode


def test_guarded_tools_keep_the_schema_transformers_builds():
    from transformers.utils import get_json_schema

    schema = get_json_schema(Calculator().multiply)["function"]
    assert schema["name"] == "multiply" and set(schema["parameters"]["properties"]) == {"a", "b"}


# ----------------------------------------------------------------------------------------------- validation
def test_a_good_environment_stage_validates():
    assert problems(environment={"name": "calculator", "params": {"digits": 4}}) == []


def test_unknown_environment_has_did_you_mean():
    (p,) = problems(environment={"name": "calculater"})
    assert p.startswith("stages.rl.environment:") and "did you mean 'calculator'" in p


def test_bad_params_and_unknown_keys_are_named():
    found = problems(environment={"name": "calculator", "params": {"digts": 4}, "max_output_char": 9})
    assert any("max_output_char: unknown key (did you mean 'max_output_chars'?)" in p for p in found)
    assert any("did you mean 'digits' for 'digts'" in p for p in found)
    (p,) = problems(environment={"name": "calculator", "params": {"digits": "four"}})
    assert "param 'digits'" in p and "expected an integer" in p
    (p,) = problems(environment={"name": "calculator", "max_output_chars": 0})
    assert "max_output_chars: must be an integer of at least 1" in p


def test_a_tool_without_typed_signature_and_docstring_is_refused():
    found = problems(environment={"name": "undocumented"})
    assert len(found) == 1 and "tool Undocumented.lookup" in found[0] and "docstring" in found[0]


def test_async_tools_are_refused_not_run_as_sync():
    (p,) = problems(environment={"name": "async_tools"})
    assert "tool AsyncTools.fetch" in p and "async def" in p
    (p,) = problems(tools=[f"{__name__}:async_tool"])
    assert p.startswith("stages.rl.tools[0]") and "async def" in p


def test_an_environment_without_tools_is_refused():
    (p,) = problems(environment={"name": "no_tools"})
    assert "offers the model no tool" in p


def test_ppo_and_sft_are_refused_with_the_reason():
    (p,) = problems(trainer="ppo", environment={"name": "calculator"})
    assert "trainer 'ppo' cannot run tool-calling episodes" in p and "critic" in p and "grpo, grpo_is" in p
    (p,) = problems(trainer="sft", environment={"name": "calculator"})
    assert "trainer 'sft' cannot run" in p
    assert problems(trainer="grpo_is", environment={"name": "calculator"}) == []


def plain_tool(x: int) -> int:
    """Add one.

    Args:
        x: a number
    """
    return x + 1


def test_plain_tools_are_imported_and_checked():
    assert problems(tools=[f"{__name__}:plain_tool"]) == []
    found = problems(tools=[f"{__name__}:missing", "nocolon", f"{__name__}:NoTools"])
    assert "tools[0]: cannot import" in found[0] and "tools[1]: expected 'module:function'" in found[1]
    assert found[2].startswith("stages.rl.tools[2]")


def test_an_environment_of_unknown_tool_count_with_one_plain_tool_is_not_toolless():
    assert problems(environment={"name": "calculator_fn"}, tools=[f"{__name__}:plain_tool"]) == []
    assert problems(environment={"name": "calculator_fn"}) == []


def test_tool_call_limits_are_bounded_and_defaulted():
    (p,) = problems(environment={"name": "calculator"}, max_tool_calling_iterations=None)
    assert "max_tool_calling_iterations: null leaves tool-calling turns unbounded" in p
    (p,) = problems(environment={"name": "calculator"}, max_tool_calling_iterations=0)
    assert "max_tool_calling_iterations: tool-calling turns per episode must be between 1 and 64" in p
    assert problems(environment={"name": "calculator"}, max_tool_calling_iterations=64) == []
    assert envs.config_defaults(spec(environment={"name": "calculator"})) == {
        "max_tool_calling_iterations": envs.DEFAULT_MAX_TOOL_CALLS}
    assert envs.config_defaults(spec(environment={"name": "c"}, max_tool_calling_iterations=2)) == {}
    assert envs.config_defaults(spec()) == {}


def test_a_chat_template_without_tool_support_is_refused(tmp_path):
    build_tokenizer().save_pretrained(tmp_path / "plain")
    build_tokenizer(tools=True).save_pretrained(tmp_path / "tools")
    (p,) = envs.template_problems(str(tmp_path / "plain"), "model")
    assert "cannot render a tool-calling conversation" in p
    assert envs.template_problems(str(tmp_path / "tools"), "model") == []
    found = envs.stage_problems(spec(environment={"name": "calculator"}), registry(), "", str(tmp_path / "plain"))
    assert len(found) == 1 and found[0].startswith("model:")


# ----------------------------------------------------------------------------------------------- TRL mapping
def test_trainer_kwargs_map_onto_trls_environment_factory_and_tools():
    from rewardkit.reward_checks import CheckedReward

    reward = CheckedReward(lambda prompts, completions, **k: [1.0] * len(completions), "r", "test")
    ctx = types.SimpleNamespace(spec=spec(environment={"name": "calculator", "params": {"digits": 2},
                                                       "max_output_chars": 7},
                                          tools=[f"{__name__}:plain_tool"], max_completion_length=99),
                                registry=registry(), rewards=[reward])
    kw = envs.trainer_kwargs(ctx)
    assert kw["tools"] == [plain_tool]
    env = kw["environment_factory"]()
    assert isinstance(env, Calculator) and env.digits == 2 and env.max_output_chars == 7 and env.episode_tokens == 99
    assert isinstance(reward.fn, envs.FaultAwareReward)
    assert envs.trainer_kwargs(types.SimpleNamespace(spec=spec(), registry=None, rewards=[])) == {}


# ----------------------------------------------------------------------------------------------- tiny tokenizer
def test_the_tiny_tool_tokenizer_renders_and_parses_what_trl_needs():
    from trl.chat_template_utils import (is_chat_template_prefix_preserving, parse_response,
                                         supports_tool_calling)

    tok, plain = build_tokenizer(tools=True), build_tokenizer()
    assert supports_tool_calling(tok) and is_chat_template_prefix_preserving(tok)
    assert not supports_tool_calling(plain)
    assert {k: v for k, v in tok.get_vocab().items() if k in plain.get_vocab()} == plain.get_vocab()  # ids kept
    call = {"type": "function", "function": {"name": "multiply", "arguments": {"a": 12, "b": 34}}}
    msgs = [{"role": "user", "content": "12*34="}, {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "name": "multiply", "content": "408"}, {"role": "assistant", "content": "408"}]
    assert tok.apply_chat_template(msgs, tokenize=False) == (
        "<|user|>12*34=<|end|><|assistant|><|call|>multiply{a:12,b:34}<|end|></s><|tool|>408<|end|>"
        "<|assistant|>408</s>")
    prefix = tok.apply_chat_template(msgs[:1], add_generation_prompt=True, tokenize=True, return_dict=False)
    parse = lambda text: parse_response(tok, tok(text, add_special_tokens=False)["input_ids"], prefix=prefix,  # noqa
                                        tools=[Calculator().multiply])
    assert parse("<|call|>multiply{a:12,b:34}<|end|></s>")["tool_calls"] == [call]
    assert parse("408</s>") == {"role": "assistant", "content": "408"}
    assert "tool_calls" not in parse("<|call|>multiply{a:12,b:3</s>")  # malformed: plain text, no call


def test_a_tool_result_is_never_read_as_the_models_answer():
    seen = []

    def last_text(prompts, completions, **kw):
        seen.extend(c[-1]["content"] for c in completions)
        return [1.0 if c[-1]["content"] == "408" else 0.0 for c in completions]

    reward = envs.FaultAwareReward(last_text)
    call = {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "m"}}]}
    cut = [call, {"role": "tool", "name": "m", "content": "408"}]  # the final turn was cut to nothing
    answered = cut + [{"role": "assistant", "content": "408"}]
    assert reward(prompts=["p", "p"], completions=[cut, answered], environments=[Calculator(), Calculator()]) \
        == [0.0, 1.0]
