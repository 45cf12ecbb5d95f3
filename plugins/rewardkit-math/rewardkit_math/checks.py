"""``check_params``: how rewardkit's ``validate`` asks a reward factory about its params before any model loads.

rewardkit calls ``Factory.check_params(**params)`` when a factory defines it and reports each returned string
(a param error) with the recipe position. Every factory here checks all its params in ``__init__`` and starts
nothing there (``math.accuracy``'s worker pool starts on the first call), so building one is the check.
"""

from __future__ import annotations


class ChecksParams:
    @classmethod
    def check_params(cls, **params) -> list[str]:
        try:
            cls(**params)
        except (ValueError, TypeError) as exc:
            return [str(exc)]
        return []
