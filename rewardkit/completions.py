"""Helpers a reward plugin may import (re-exported as ``rewardkit.completion_text``); no torch."""

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
