"""Run-time checking of reward functions: what a reward call must return, and what a fault does to training.

Every reward a recipe names is wrapped in a :class:`CheckedReward` (``Registry.build_reward``): the output must be
one finite number (or None, "could not judge") per sample. A fault (a raise, NaN/inf, a non-number, a wrong
length) either stops the run with a :class:`~rewardkit.errors.RewardError` naming the reward, its distribution
and the sample, or, under ``reward_faults.policy: skip``, becomes ``None`` (TRL leaves the sample out of that
reward) and is counted, up to ``max_rate``.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any, Callable

from rewardkit.completions import completion_text
from rewardkit.errors import RewardError
from rewardkit.recipe_schema import FAULT_POLICIES, FaultPolicy  # noqa: F401 - the section, declared there
from rewardkit.values import check_section


# Keyword arguments of a reward call that are not per-sample lists (passed unchanged when one sample is re-run).
_CALL_WIDE = {"trainer_state", "log_extra", "log_metric"}
_REPORTED_FAULTS = 5  # faults printed in full per reward under the skip policy; the rest are counted


def fault_policy(config: FaultPolicy | dict | None) -> FaultPolicy:
    """The ``reward_faults`` section (rewardkit.recipe_schema.FaultPolicy) a reward runs under: as given, or
    checked and built from a mapping (ValueError naming what is wrong)."""
    if isinstance(config, FaultPolicy):
        return config
    problems: list[str] = []
    policy = check_section(FaultPolicy, config or {}, "reward_faults", problems)
    if problems:
        raise ValueError("; ".join(problems))
    return policy


@dataclass
class Fault:
    """One contract violation of one reward call: ``sample`` is None when the whole batch is at fault."""

    sample: int | None
    message: str


def find_faults(values: Any, n: int, name: str, provider: str) -> tuple[list[float | None], list[Fault]]:
    """Check one reward call's output; return the cleaned values (faulty samples as None) and the faults."""
    if not isinstance(values, (list, tuple)) and not hasattr(values, "tolist"):
        return [None] * n, [Fault(None, f"reward '{name}' from {provider} returned {type(values).__name__}, "
                                       f"expected a list of {n} floats")]
    values = values.tolist() if hasattr(values, "tolist") else list(values)
    if len(values) != n:
        return [None] * n, [Fault(None, f"reward '{name}' from {provider} returned {len(values)} values for "
                                       f"{n} completions")]
    out: list[float | None] = []
    faults: list[Fault] = []
    for i, v in enumerate(values):
        if v is None:
            out.append(None)
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            try:
                if isinstance(v, (str, bytes)):  # float("1") would pass a string off as a number
                    raise TypeError
                v = float(v)  # numpy scalars, 0-d tensors
            except (TypeError, ValueError):
                faults.append(Fault(i, f"reward '{name}' from {provider} returned {type(v).__name__} "
                                       f"({v!r:.60}) for sample {i}; rewards must be numbers or None"))
                out.append(None)
                continue
        if math.isnan(v) or math.isinf(v):
            faults.append(Fault(i, f"reward '{name}' from {provider} returned {v} for sample {i}; "
                                   f"return None for 'could not judge'"))
            out.append(None)
            continue
        out.append(float(v))
    return out, faults


def check_rewards(values: Any, n: int, name: str, provider: str) -> list[float | None]:
    """Validate one reward call's output; raise RewardError naming the sample at fault."""
    out, faults = find_faults(values, n, name, provider)
    if faults:
        raise RewardError(faults[0].message)
    return out


def _one_sample(kwargs: dict, n: int, i: int) -> dict:
    """The keyword arguments of a batch call, cut down to sample ``i``."""
    out = {}
    for key, value in kwargs.items():
        if key == "log_extra":
            out[key] = lambda column, values: None  # a one-sample re-run must not add rows to TRL's table
        elif key == "log_metric":
            out[key] = lambda metric, value: None
        elif key not in _CALL_WIDE and isinstance(value, (list, tuple)) and len(value) == n:
            out[key] = [value[i]]
        else:
            out[key] = value
    return out


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


class CheckedReward:
    """A TRL reward function with a per-instance name, output checks and a fault policy (picklable).

    Every fault is reported with the reward's name, the distribution that provides it and the sample index.
    When the reward raises on a batch, each sample is re-run alone to find which one raises.
    """

    def __init__(self, fn: Callable, name: str, provider: str, faults: FaultPolicy | dict | None = None):
        self.fn = fn
        self.__name__ = name
        self.provider = provider
        self.faults = fault_policy(faults)
        self.calls = 0  # batches scored by this instance (this process)
        self.seen = 0  # samples scored
        self.skipped = 0  # samples turned into None by the skip policy
        self.reported = 0  # faults printed
        self.kept: list | None = None  # (completion text, score) pairs, once keep() is called
        self._keep_limit = 0

    # -- the call ------------------------------------------------------------------------------------------
    def __call__(self, prompts=None, completions=None, **kwargs):
        n = len(completions)
        try:
            values = self.fn(prompts=prompts, completions=completions, **kwargs)
        except Exception as exc:  # noqa: BLE001 - reported with the sample that raises
            singles = [self._run_one(prompts, completions, kwargs, n, i) for i in range(n)]
            return self._kept(completions, self._settle(*self._merge_singles(singles, exc, n), kwargs))
        return self._kept(completions, self._settle(*find_faults(values, n, self.__name__, self.provider), kwargs))

    def _run_one(self, prompts, completions, kwargs, n, i):
        try:
            return self.fn(prompts=[prompts[i]] if prompts is not None else None, completions=[completions[i]],
                           **_one_sample(kwargs, n, i)), None
        except Exception as exc:  # noqa: BLE001
            return None, exc

    def _merge_singles(self, singles, batch_exc, n):
        values: list[float | None] = []
        faults: list[Fault] = []
        for i, (value, exc) in enumerate(singles):
            if exc is not None:
                faults.append(Fault(i, f"reward '{self.__name__}' from {self.provider} raised {_describe(exc)} "
                                       f"on sample {i}"))
                values.append(None)
                continue
            one, bad = find_faults(value, 1, self.__name__, self.provider)
            faults.extend(Fault(i, f.message.replace("for sample 0", f"for sample {i}")
                                .replace("for 1 completions", f"for 1 completion (sample {i} re-run alone)"))
                          for f in bad)
            values.append(one[0])
        if not faults:  # no sample raises alone: the batch as a whole is at fault
            faults.append(Fault(None, f"reward '{self.__name__}' from {self.provider} raised "
                                      f"{_describe(batch_exc)} on a batch of {n} (no sample raises alone)"))
            values = [None] * n
        return values, faults

    # -- the policy ----------------------------------------------------------------------------------------
    def _settle(self, values: list, faults: list[Fault], kwargs: dict) -> list[float | None]:
        self.calls += 1
        n = len(values)
        bad = n if any(f.sample is None for f in faults) else len({f.sample for f in faults})
        first_call = self.calls == 1
        if faults and (self.faults.policy == "fail" or (first_call and self.faults.fail_fast_first_step)):
            more = f" ({len(faults) - 1} more fault(s) in this batch)" if len(faults) > 1 else ""
            why = ("reward_faults.policy is fail" if self.faults.policy == "fail"
                   else "faults on the first step always fail (reward_faults.fail_fast_first_step)")
            raise RewardError(f"{faults[0].message}{more}; {why}")
        if self.faults.policy != "skip":
            return values
        self.seen += n
        self.skipped += bad
        log_metric = kwargs.get("log_metric")
        if callable(log_metric):  # TRL averages it over the logging window: skipped samples per batch
            log_metric(f"reward_faults/{self.__name__}/skipped", float(bad))
        for f in faults:
            self.reported += 1
            if self.reported <= _REPORTED_FAULTS:
                tail = "; further faults of this reward are counted, not printed" \
                    if self.reported == _REPORTED_FAULTS else ""
                print(f"[rewardkit] skipped: {f.message} ({self.skipped} of {self.seen} samples skipped so far)"
                      f"{tail}", file=sys.stderr, flush=True)
        if bad and self.skipped > self.faults.max_rate * self.seen:
            raise RewardError(f"reward '{self.__name__}' from {self.provider}: {self.skipped} of {self.seen} "
                              f"samples skipped ({self.skipped / self.seen:.1%}), above reward_faults.max_rate "
                              f"{self.faults.max_rate:.1%}; latest: {faults[0].message}")
        return values

    def keep(self, limit: int) -> None:
        """From now on keep the first ``limit`` (completion text, score) pairs this instance settles, in
        ``kept`` (``rewardkit run --smoke`` reports them)."""
        self.kept, self._keep_limit = [], limit

    def _kept(self, completions, values: list) -> list:
        if self.kept is not None and len(self.kept) < self._keep_limit:
            room = self._keep_limit - len(self.kept)
            self.kept.extend(zip((completion_text(c) for c in completions[:room]), values[:room]))
        return values

    def fault_counts(self) -> dict:
        return {"policy": self.faults.policy, "calls": self.calls, "samples": self.seen, "skipped": self.skipped}

    def __repr__(self) -> str:
        return f"<reward {self.__name__} from {self.provider}>"


class AsyncCheckedReward(CheckedReward):
    async def __call__(self, prompts=None, completions=None, **kwargs):
        n = len(completions)
        try:
            values = await self.fn(prompts=prompts, completions=completions, **kwargs)
        except Exception as exc:  # noqa: BLE001
            singles = [await self._arun_one(prompts, completions, kwargs, n, i) for i in range(n)]
            return self._kept(completions, self._settle(*self._merge_singles(singles, exc, n), kwargs))
        return self._kept(completions, self._settle(*find_faults(values, n, self.__name__, self.provider), kwargs))

    async def _arun_one(self, prompts, completions, kwargs, n, i):
        try:
            return await self.fn(prompts=[prompts[i]] if prompts is not None else None,
                                 completions=[completions[i]], **_one_sample(kwargs, n, i)), None
        except Exception as exc:  # noqa: BLE001
            return None, exc
