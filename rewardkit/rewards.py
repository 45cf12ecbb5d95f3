"""Built-in rule-based rewards. The real math and code rewards live in their own plugins."""

from __future__ import annotations


def completion_text(completion) -> str:
    """The text of a completion: a string, or the last message of a conversational completion."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    if isinstance(completion, (list, tuple)) and completion:
        last = completion[-1]
        if isinstance(last, dict):
            content = last.get("content", "")
            if isinstance(content, list):  # multimodal content parts
                return "".join(p.get("text", "") for p in content if isinstance(p, dict))
            return str(content)
        return str(last)
    return ""


class ExactMatch:
    """1.0 when the completion's answer equals the gold column exactly, else 0.0.

    The answer is the completion up to the first newline (``first_line=True``), stripped of whitespace.
    With ``partial_credit=p`` (0 < p < 1) a wrong answer earns ``p`` times the share of characters that match
    the gold answer aligned from the right (the units digit with the units digit), over the longer of the two:
    a denser signal for digit-by-digit tasks, still strictly below an exact answer's 1.0.
    Never returns ``None``: nothing here can fail to judge.
    """

    def __init__(self, column: str = "answer", first_line: bool = True, strip: bool = True,
                 partial_credit: float = 0.0):
        if not 0.0 <= partial_credit < 1.0:
            raise ValueError(f"partial_credit must be in [0, 1), got {partial_credit}")
        self.column = column
        self.first_line = first_line
        self.strip = strip
        self.partial_credit = partial_credit
        self.__name__ = "exact_match"

    def _score(self, pred: str, gold: str) -> float:
        if pred == gold:
            return 1.0
        if not self.partial_credit or not pred:
            return 0.0
        same = sum(a == b for a, b in zip(reversed(pred), reversed(gold)))
        return self.partial_credit * same / max(len(pred), len(gold))

    def _normalize(self, text: str) -> str:
        if self.first_line:
            text = text.split("\n", 1)[0]
        return text.strip() if self.strip else text

    def __call__(self, prompts, completions, **kwargs) -> list[float]:
        gold = kwargs[self.column]
        return [self._score(self._normalize(completion_text(c)), str(g).strip())
                for c, g in zip(completions, gold, strict=True)]


def exact_match_columns(params: dict) -> list[str]:
    return [params.get("column", "answer")]
