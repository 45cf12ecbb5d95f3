"""Built-in rule-based rewards. The real math and code rewards live in their own plugins."""

from __future__ import annotations


def completion_text(completion) -> str:
    """The text of a completion, standard (str) or conversational (list of messages)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    return str(completion)


class ExactMatch:
    """1.0 when the completion's answer equals the gold column exactly, else 0.0.

    The answer is the completion up to the first newline (``first_line=True``), stripped of whitespace.
    Used by the arithmetic quick start; never returns ``None`` because nothing here can fail to judge.
    """

    def __init__(self, column: str = "answer", first_line: bool = True, strip: bool = True):
        self.column = column
        self.first_line = first_line
        self.strip = strip
        self.__name__ = "exact_match"

    def _normalize(self, text: str) -> str:
        if self.first_line:
            text = text.split("\n", 1)[0]
        return text.strip() if self.strip else text

    def __call__(self, prompts, completions, **kwargs) -> list[float]:
        gold = kwargs[self.column]
        return [float(self._normalize(completion_text(c)) == str(g).strip())
                for c, g in zip(completions, gold, strict=True)]


def exact_match_columns(params: dict) -> list[str]:
    return [params.get("column", "answer")]
