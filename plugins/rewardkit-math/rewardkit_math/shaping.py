"""Format and length rewards: ``math.format`` and ``math.length_penalty``. Pure Python, no workers."""

from __future__ import annotations

import re

from rewardkit import completion_text
from rewardkit_math.checks import ChecksParams


def _prompt_text(prompt) -> str:
    if isinstance(prompt, list):  # conversational: the generation prompt is the end of the last message
        return str(prompt[-1].get("content", "")) if prompt and isinstance(prompt[-1], dict) else ""
    return str(prompt or "")


class MathFormat(ChecksParams):
    """1.0 when the completion is ``<think>...</think>`` then ``<answer>...</answer>``, else 0.0.

    Leading whitespace is ignored. A chat template that pre-fills the opening ``<think>`` (the prompt ends
    with it, or ``prefilled_think=True``) is handled: the completion then starts inside the think block.
    Both blocks must be non-empty, tags may not repeat, and nothing but whitespace may follow
    ``</answer>`` unless ``allow_trailing=True``. With ``require_think=False`` a bare
    ``<answer>...</answer>`` also scores 1.0.
    """

    judges_only = "format"  # a wrong answer scores as a right one (rewardkit.hookspecs: what a reward judges)

    def __init__(self, think_tag: str = "think", answer_tag: str = "answer", require_think: bool = True,
                 allow_trailing: bool = False, prefilled_think: bool | None = None):
        for name, tag in (("think_tag", think_tag), ("answer_tag", answer_tag)):
            if not isinstance(tag, str) or not re.fullmatch(r"[A-Za-z_][\w\-]*", tag):
                raise ValueError(f"{name}: a tag name like 'think', got {tag!r}")
        if think_tag == answer_tag:
            raise ValueError("think_tag and answer_tag must differ")
        for name, v in (("require_think", require_think), ("allow_trailing", allow_trailing)):
            if not isinstance(v, bool):
                raise ValueError(f"{name}: must be true or false, got {v!r}")
        if prefilled_think is not None and not isinstance(prefilled_think, bool):
            raise ValueError(f"prefilled_think: true, false or null (detect from the prompt), got {prefilled_think!r}")
        self.think_open, self.think_close = f"<{think_tag}>", f"</{think_tag}>"
        self.prefilled = prefilled_think
        t, a = re.escape(think_tag), re.escape(answer_tag)
        think = rf"<{t}>(?P<think>(?:(?!</?{t}>).)*)</{t}>\s*"
        answer = rf"<{a}>(?P<answer>(?:(?!</?{a}>).)*)</{a}>"
        body = think + answer if require_think else rf"(?:{think})?{answer}"
        # Tempered dots and no nested quantifier: linear time even on a 1 MB completion.
        self._re = re.compile(rf"\s*{body}" + (r".*" if allow_trailing else r"\s*"), re.S)
        self.__name__ = "math.format"

    def _score(self, prompt, completion) -> float:
        text = completion_text(completion)
        prefilled = self.prefilled
        if prefilled is None:
            prefilled = _prompt_text(prompt).rstrip().endswith(self.think_open)
        if prefilled and not text.lstrip().startswith(self.think_open):
            text = self.think_open + text
        m = self._re.fullmatch(text)
        if m is None or not m.group("answer").strip():
            return 0.0
        return 0.0 if m.group("think") is not None and not m.group("think").strip() else 1.0

    def __call__(self, prompts=None, completions=None, **kwargs) -> list[float]:
        prompts = prompts if prompts is not None else [None] * len(completions)
        return [self._score(p, c) for p, c in zip(prompts, completions, strict=True)]


class LengthPenalty(ChecksParams):
    """DAPO's soft over-length punishment: 0 up to ``max_length - cache_length``, then a linear ramp down to
    -1 at ``max_length``, and -1 beyond.

    Length is counted in tokens when the trainer passes ``completion_ids`` (GRPO does) and ``unit`` is
    ``auto`` or ``tokens``; otherwise in characters of the completion text (``unit: chars``, or ``auto``
    called without ``completion_ids``). ``unit: tokens`` without ``completion_ids`` is an error.
    """

    judges_only = "length"  # rewardkit.hookspecs: what a reward judges

    def __init__(self, max_length: int = 1024, cache_length: int = 256, unit: str = "auto"):
        for name, v in (("max_length", max_length), ("cache_length", cache_length)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: a positive int, got {v!r}")
        if cache_length > max_length:
            raise ValueError(f"cache_length ({cache_length}) must not exceed max_length ({max_length})")
        if unit not in ("auto", "tokens", "chars"):
            raise ValueError(f"unit: one of auto, tokens, chars, got {unit!r}")
        self.max_length, self.cache_length, self.unit = max_length, cache_length, unit
        self.__name__ = "math.length_penalty"

    def penalty(self, length: int) -> float:
        expected = self.max_length - self.cache_length
        if length <= expected:
            return 0.0
        if length <= self.max_length:
            return (expected - length) / self.cache_length
        return -1.0

    def __call__(self, prompts=None, completions=None, completion_ids=None, **kwargs) -> list[float]:
        if self.unit == "tokens" and completion_ids is None:
            raise ValueError("math.length_penalty: unit 'tokens' needs completion_ids, which this caller did "
                             "not pass; use unit: chars or auto")
        if completion_ids is not None and self.unit != "chars":
            lengths = [len(ids) for ids in completion_ids]
        else:
            lengths = [len(completion_text(c)) for c in completions]
        return [self.penalty(n) for n in lengths]
