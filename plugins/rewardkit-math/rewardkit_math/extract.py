"""Final-answer extraction from completions and gold normalization: pure Python, linear time, no sympy.

Runs in the trainer process (cheap); only the short extracted answer travels to the checker workers, so a
1 MB completion costs one scan here and nothing in the workers.

Extraction modes (tried in the order given by the ``extract`` param; the first mode that finds an answer wins):

- ``answer_tag``: the content of the last ``<answer>...</answer>``; inside it, the other modes are tried
  again and, if none finds anything, the whole tag content is the answer.
- ``boxed``: ``\\boxed{...}`` / ``\\fbox{...}`` with balanced braces (unbalanced ones are skipped).
- ``hash``: GSM8K style ``#### 42`` (the rest of the line after the last ``####``).
- ``answer_is``: "the (final) answer is ...", "Answer: ..." (the rest of that sentence/line).
- ``last_number``: the last number in the completion (lenient; off by default).

``multiple`` decides what a completion with several boxed answers means: ``last`` (default) takes the last,
``all`` joins them into one set answer (``\\boxed{2}, \\boxed{3}`` -> ``2, 3``), ``reject`` scores 0.0 when
they disagree (hedging).
"""

from __future__ import annotations

import re

MODES = ("answer_tag", "boxed", "hash", "answer_is", "last_number")
DEFAULT_MODES = ("answer_tag", "boxed", "hash", "answer_is")
MULTIPLE = ("last", "all", "reject")
MAX_ANSWER_CHARS = 1000  # a longer "answer" is not an answer: 0.0 without calling the checker
TAIL_CHARS = 20_000  # answer_is / hash / last_number look at the end of the completion only
MAX_BOXED = 20  # multiple="all"/"reject" consider at most this many boxed answers
REJECTED = object()  # extraction result for multiple="reject" with disagreeing boxed answers

_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BRACE_RE = re.compile(r"[{}]")
_ANSWER_IS_RE = re.compile(r"(?i)(?:final answer|the answer|answer)\s*(?:is|:|=)\s*:?\s*")
_LEADING_NUMBER_RE = re.compile(r"^((?:\\?\$)?[-+]?\d[\d,]*(?:\.\d+)?\\?%?)\s+[A-Za-z]")
_NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")
_THOUSANDS_RE = re.compile(r"^(-?)\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_DELIMS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))


def check_modes(extract, multiple: str) -> tuple[str, ...]:
    """Validate the ``extract`` and ``multiple`` params; errors name the param."""
    if isinstance(extract, str):
        extract = [extract]
    modes = tuple(extract)
    if not modes:
        raise ValueError(f"extract: give at least one extraction mode out of {', '.join(MODES)}")
    for m in modes:
        if m not in MODES:
            raise ValueError(f"extract: unknown extraction mode {m!r}; choose from {', '.join(MODES)}")
    if len(set(modes)) != len(modes):
        raise ValueError(f"extract: mode listed twice in {list(modes)}")
    if multiple not in MULTIPLE:
        raise ValueError(f"multiple: must be one of {', '.join(MULTIPLE)}, got {multiple!r}")
    return modes


def _balanced(text: str, start: int) -> int:
    """Index of the ``}`` closing the brace opened just before ``start``, or -1."""
    depth = 1
    for m in _BRACE_RE.finditer(text, start):
        depth += 1 if m.group() == "{" else -1
        if depth == 0:
            return m.start()
    return -1


def boxed_contents(text: str, limit: int = MAX_BOXED) -> list[str]:
    """Contents of the last ``limit`` balanced ``\\boxed{}``/``\\fbox{}`` in order of appearance."""
    starts = [m.end() for m in _BOXED_RE.finditer(text)][-limit:]
    out = []
    for s in starts:
        end = _balanced(text, s)
        if end >= 0:
            out.append(text[s:end])
    return out


def clean(ans: str) -> str:
    """Strip markdown bold, math delimiters, trailing punctuation and thousands separators of a plain number."""
    ans = ans.strip().strip("*").strip()  # markdown bold around the answer
    for _ in range(2):
        for left, right in _DELIMS:
            if ans.startswith(left) and ans.endswith(right) and len(ans) >= len(left) + len(right):
                ans = ans[len(left):len(ans) - len(right)].strip()
        ans = ans.rstrip(".;").strip()
    if _THOUSANDS_RE.match(ans):
        ans = ans.replace(",", "")
    return ans


def _from_boxed(text: str, multiple: str):
    found = [b.strip() for b in boxed_contents(text, 1 if multiple == "last" else MAX_BOXED)]
    found = [b for b in found if b]
    if not found:
        return None
    if multiple == "all":
        return ", ".join(found)
    if multiple == "reject" and len({clean(b) for b in found}) > 1:
        return REJECTED
    return found[-1]


def _from_hash(text: str):
    i = text.rfind("####", max(0, len(text) - TAIL_CHARS))
    if i < 0:
        return None
    line = text[i + 4:].lstrip("# \t").split("\n", 1)[0]
    return line.strip() or None


def _from_answer_is(text: str):
    tail = text[-TAIL_CHARS:]
    last = None
    for last in _ANSWER_IS_RE.finditer(tail):
        pass
    if last is None:
        return None
    rest = tail[last.end():].split("\n", 1)[0]
    # End of sentence: a period followed by a space (not a decimal point) ends the answer.
    rest = re.split(r"\.(?:\s|$)", rest, maxsplit=1)[0].strip()
    # "5 apples", "$18 in total": a leading number followed by words is the number (units dropped).
    lead = _LEADING_NUMBER_RE.match(rest)
    return (lead.group(1) if lead else rest) or None


def _from_last_number(text: str):
    last = None
    for last in _NUMBER_RE.finditer(text[-TAIL_CHARS:]):
        pass
    return last.group().rstrip(",") if last else None


def _last_answer_tag(text: str):
    """Content of the last ``<answer>...</answer>`` (case-insensitive), found with two rfinds: O(n)."""
    tail = text[-TAIL_CHARS:]
    low = tail.lower()
    end = low.rfind("</answer>")
    start = low.rfind("<answer>", 0, end) if end >= 0 else -1
    return tail[start + len("<answer>"):end] if start >= 0 else None


def extract_answer(text: str, modes, multiple: str = "last", _inner: bool = False):
    """The final answer of ``text`` (a cleaned string), ``REJECTED``, or None when there is none."""
    for mode in modes:
        if mode == "answer_tag":
            if _inner:
                continue
            inner = _last_answer_tag(text)
            if inner is None:
                continue
            ans = extract_answer(inner, [m for m in modes if m != "answer_tag"], multiple, _inner=True)
            ans = ans if ans is not None else (clean(inner) or None)
        elif mode == "boxed":
            ans = _from_boxed(text, multiple)
        elif mode == "hash":
            ans = _from_hash(text)
        elif mode == "answer_is":
            ans = _from_answer_is(text)
        else:
            ans = _from_last_number(text)
        if ans is REJECTED:
            return REJECTED
        if ans is not None:
            ans = clean(ans)
            if ans:
                return ans
    return None


def normalize_gold(gold) -> str:
    """Gold answer as the LaTeX the checker parses, wrapped in ``\\boxed{}`` once.

    GSM8K solutions keep what follows the last ``####``; a gold that already has a ``\\boxed{}`` keeps the
    last one's content; anything else is taken whole. Wrapping in ``\\boxed{}`` stops math-verify from
    reading ``2\\sqrt{2}`` as 2 or ``y=2x+1`` as 2.
    """
    text = str(gold).strip()
    if "####" in text:
        text = text[text.rfind("####") + 4:].strip()
    else:
        boxed = boxed_contents(text, 1)
        if boxed:
            text = boxed[-1]
    return "\\boxed{" + clean(text) + "}"
