"""Pull the program out of a completion: fenced blocks, by language tag, last / first / all."""

from __future__ import annotations

import re

BLOCK_CHOICES = ("last", "first", "all")
# An opening fence (``` or ~~~, 3+), an optional info string, the body, and a matching close or the end of
# the text (a completion cut by max_completion_length still yields its block).
_FENCE = re.compile(r"^[ \t]{0,3}(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\n`]*)\n(?P<body>.*?)"
                    r"(?:^[ \t]{0,3}(?P=fence)[`~]*[ \t]*$|\Z)", re.S | re.M)
LANGUAGE_ALIASES = {"python": {"python", "py", "python3", "py3"}}


def extract_code(text: str, *, language: str = "python", block: str = "last",
                 require_fence: bool = False) -> str | None:
    """The code to run, or None when there is none.

    Blocks tagged with ``language`` (or an alias) or untagged are candidates; blocks tagged with another
    language are ignored. ``block`` picks the last, first, or all candidates (joined with a blank line).
    Without any fenced block the whole text is the program unless ``require_fence``.
    """
    if block not in BLOCK_CHOICES:
        raise ValueError(f"block must be one of {BLOCK_CHOICES}, got {block!r}")
    names = LANGUAGE_ALIASES.get(language.lower(), {language.lower()})
    found_any = False
    candidates = []
    for m in _FENCE.finditer(text):
        found_any = True
        tag = (m.group("info").strip().split() or [""])[0].lower()
        if tag.startswith("{") or tag == "" or tag in names or tag.lstrip(".") in names:
            candidates.append(m.group("body"))
    if candidates:
        chosen = {"last": candidates[-1:], "first": candidates[:1], "all": candidates}[block]
        code = "\n\n".join(c.rstrip("\n") for c in chosen) + "\n"
        return code if code.strip() else None
    if found_any or require_fence:
        return None
    return text if text.strip() else None
