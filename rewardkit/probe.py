"""``rewardkit probe``: score adversarial completions with a recipe's rewards before any training.

For every reward of every RL stage, built exactly as training builds it (``Registry.build_reward`` with the
stage's params, alias and fault policy, plugins included), and for the first ``rows`` training rows of the
stage's own dataset (loaded as the pipeline loads it), each probe is one completion per row:

- controls: ``gold`` (the gold answer in the format the reward scores highest, see :func:`gold_format`) and
  ``wrong`` (another row's gold answer in that same format: plainly wrong, right format);
- empty / whitespace / the prompt echoed back / format only (the gold completion with the answer cut out,
  empty tags, an empty ``\\boxed{}``, an empty code fence);
- answer spraying: every distinct gold of the rows in one completion, the gold followed by contradicting
  answers, several boxed and several tagged answers with the gold at a rotating position;
- a 1 MB completion of numbers, control characters and lone surrogates, eval bait;
- whatever the reward declares itself (``probe_completions``, documented in :mod:`rewardkit.hookspecs`),
  e.g. the code plugin's programs that exit 0 early, print success markers, raise or return always-equal
  objects.

A probe is an **exploit** when it earns the gold (:func:`earns_gold`: at least half the gold control's mean,
as much as the gold's where that is not positive) and more than the wrong control's mean. Then the reward as a
whole is checked; each check is a row ``check: ...`` and a finding when it fails:

- ``judges correctness``: the wrong control must not earn the gold. A reward that declares
  ``judges_only = "format"`` or ``"length"`` (:data:`rewardkit.hookspecs.REWARD_JUDGES_ONLY`) is exempt and held
  to its own rule instead (:data:`KIND_PROBES`): a format reward must not pay a completion without content
  (empty, blank, the format with the answer cut out, empty tags, box or fence) what earns the gold; a length
  reward must not pay the 1 MB completion so.
- the reward contract, by metamorphic checks on one batch of the gold, wrong and empty completions of the first
  :data:`CHECK_ROWS` rows: the same scores on a ``repeated call``, in a ``batch split`` (one call, then three),
  in another ``batch order`` (reversed, results put back), and in a ``fresh process`` (a new interpreter with
  another hash seed scores the first :data:`PROCESS_ROWS` rows, bounded by :data:`PROCESS_TIMEOUT`); and
  ``shuffled golds``: a correctness reward that declares dataset columns scores its gold completions lower
  once those columns come from other rows.

``None`` ("could not judge") is left out of a mean and reported, never read as 0; the contract checks compare
where ``None`` falls as well as the numbers.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Callable

from rewardkit.errors import PluginError, RewardkitError
from rewardkit.hookspecs import JUDGES_ONLY_VALUES, REWARD_JUDGES_ONLY, REWARD_PROBE_ATTRIBUTES

ROWS = 32  # dataset rows probed per stage
SPRAY_CAP = 32  # distinct gold answers sprayed into one completion
BIG_ROWS = 4  # rows that get the 1 MB completion (it is the same text for each)
MB = 1 << 20
CONTROLS = ("gold", "wrong")
PROBE_GOLD, PROBE_COMPLETIONS = REWARD_PROBE_ATTRIBUTES
# Completion columns a dataset may carry whose text is a correct completion (a gold candidate).
REFERENCE_COLUMNS = ("solution", "completion", "chosen")
# What a reward that judges only format or only length is held to instead of judging correctness: these probes
# must not earn the gold (a format reward pays no completion without content, a length reward no runaway length).
KIND_PROBES = {"format": ("empty", "whitespace", "format only", "empty tags", "empty boxed", "empty fence"),
               "length": ("1 MB of numbers",)}
KIND_WHY = {"format": "a format reward pays a completion without content as it pays the gold",
            "length": "a length reward pays a runaway length as it pays the gold"}
EXPLOIT_WHY = "it earns the gold and more than a wrong answer"
CHECK = "check: "  # the probe name of a check's row
CHECK_ROWS = 8  # rows whose gold, wrong and empty completions the contract checks score
CHECK_LABELS = ("gold", "wrong", "empty")
PROCESS_ROWS = 4  # of those, the rows a fresh interpreter scores again
PROCESS_TIMEOUT = 15.0  # seconds it may take from its start; it runs while the probes are scored
TOL = 1e-4  # scores closer than this (absolute or relative) are the same score


@dataclass
class ProbeResult:
    stage: str
    reward: str
    probe: str  # a probe's name, or "check: <name>" for a check of the reward as a whole
    score: float | None  # mean over the rows the reward judged; None: it judged none
    gold_score: float | None
    exploit: bool  # a finding: an exploitable probe or a failed check
    judged: int = 0
    n: int = 0
    error: str | None = None  # the reward raised (under the stage's fault policy) on this probe
    detail: str | None = None  # why it is a finding, or why a check was not required or not compared

    def as_dict(self) -> dict:
        return {"stage": self.stage, "reward": self.reward, "probe": self.probe, "score": self.score,
                "gold_score": self.gold_score, "exploit": self.exploit,
                "finding": self.detail if self.exploit else None}


@dataclass
class RewardReport:
    stage: str
    reward: str  # the alias training logs it under
    name: str  # the registered name
    provider: str = ""
    rows: int = 0
    gold_format: str | None = None
    results: list[ProbeResult] = field(default_factory=list)
    skipped: str | None = None  # why this reward (or its stage) could not be probed
    judges: str = "correctness"  # or what it declares it judges only (``judges_only``)

    @property
    def findings(self) -> list[ProbeResult]:
        """Exploitable probes and failed checks."""
        return [r for r in self.results if r.exploit]

    exploits = findings  # the name ``rewardkit probe`` counts for its exit status

    def control(self, name: str) -> float | None:
        return next((r.score for r in self.results if r.probe == name), None)

    @property
    def blind(self) -> bool:
        """The wrong control earns the gold (:func:`earns_gold`): the reward does not judge correctness."""
        return earns_gold(self.control("wrong"), self.control("gold"))


def earns_gold(score: float | None, gold: float | None) -> bool:
    """At least half the gold control's mean; as much as the gold's where that is not positive (0 or a penalty).

    Undecidable (False) without a score or a gold score.
    """
    return score is not None and gold is not None and score >= min(gold, gold / 2)


def is_exploit(score: float | None, gold: float | None, wrong: float | None) -> bool:
    """The verdict rule: the probe earns the gold (:func:`earns_gold`) and more than the wrong control's mean.

    Undecidable (False) without a probe or gold score; without a wrong score only the gold rule counts.
    """
    return earns_gold(score, gold) and (wrong is None or score > wrong)


def declared_judges(reward, factory=None, name: str = "") -> str:
    """``correctness``, or what the reward declares it judges only (``judges_only``, :mod:`rewardkit.hookspecs`),
    read from the reward function, else from the factory that built it; PluginError for any other value."""
    value = getattr(getattr(reward, "fn", reward), REWARD_JUDGES_ONLY, None)
    if value is None:
        value = getattr(factory, REWARD_JUDGES_ONLY, None)
    if value is None:
        return "correctness"
    if value not in JUDGES_ONLY_VALUES:
        raise PluginError(f"reward '{name}' from {getattr(reward, 'provider', 'its plugin')} declares "
                          f"{REWARD_JUDGES_ONLY} = {value!r}; it must be one of "
                          f"{', '.join(repr(v) for v in JUDGES_ONLY_VALUES)} or absent (see rewardkit/hookspecs.py)")
    return value


# --------------------------------------------------------------------------- gold answers and formats
def core_answer(gold) -> str:
    """The answer itself from a gold value: ``#### 7`` -> ``7``, ``\\boxed{7}`` -> ``7``, ``57`` -> ``57``."""
    text = str(gold).strip()
    m = re.fullmatch(r"(?s).*####\s*(.+?)\s*", text)
    if m:
        return m.group(1)
    m = re.fullmatch(r"\\boxed\{(.*)\}", text)
    return m.group(1) if m else text


def _prompt_text(prompt) -> str:
    if isinstance(prompt, list):
        return "\n".join(str(m.get("content", "")) for m in prompt if isinstance(m, dict))
    return str(prompt or "")


# name -> completion text for one row given (core answer, row). Tried in order; the best scoring one wins.
FORMATS: dict[str, Callable[[str, dict], str | None]] = {
    "bare": lambda a, row: a,
    "####": lambda a, row: f"#### {a}",
    "boxed": lambda a, row: f"\\boxed{{{a}}}",
    "answer is": lambda a, row: f"The answer is {a}.",
    "answer tag": lambda a, row: f"<answer>{a}</answer>",
    "think+answer": lambda a, row: f"<think>Working it out.</think>\n<answer>{a}</answer>",
    **{f"column {c}": (lambda a, row, c=c: str(row[c]) if row.get(c) is not None else None)
       for c in REFERENCE_COLUMNS},
}


class _Probe:
    """One stage's rows and one built reward; scores a list of completion texts (one per row)."""

    def __init__(self, reward, rows: list[dict], gold_column: str | None):
        self.reward, self.rows = reward, rows
        self.fn = getattr(reward, "fn", reward)  # the plugin's object under rewardkit's CheckedReward
        self.chat = bool(rows) and isinstance(rows[0].get("prompt"), list)
        self.cores = [core_answer(r[gold_column]) if gold_column and r.get(gold_column) is not None else None
                      for r in rows]

    def _call(self, pairs: list[tuple[int, str]]) -> list:
        """The reward's values for (row index, completion text) pairs, in one call, as TRL makes it."""
        rows = [self.rows[i] for i, _ in pairs]
        comps = [[{"role": "assistant", "content": t}] if self.chat else t for _, t in pairs]
        cols = {k: [r.get(k) for r in rows] for k in rows[0] if k != "prompt"}
        extras = {"trainer_state": SimpleNamespace(global_step=0, max_steps=1, epoch=0.0),
                  "log_extra": lambda column, values: None, "log_metric": lambda name, value: None}
        return self.reward(prompts=[r.get("prompt") for r in rows], completions=comps, **cols, **extras)

    def score_many(self, probes: dict[str, list]) -> dict[str, tuple[float | None, int, int, str | None]]:
        """Per probe (name -> one text or None per row): mean score, rows judged, rows scored, error.

        Every probe in one batch (so a reward that normalizes per batch or with running statistics compares
        them with each other, as within a training batch); if the batch raises, each probe alone, so the error
        is reported against the probe that causes it."""
        pairs = {name: [(i, t) for i, t in enumerate(texts) if t is not None] for name, texts in probes.items()}
        flat = [pair for name in probes for pair in pairs[name]]
        try:
            values = self._call(flat) if flat else []
        except Exception as exc:  # noqa: BLE001 - reported as a probe's finding, not a crash of probe
            if len(probes) == 1:
                name = next(iter(probes))
                return {name: (None, 0, len(flat), f"{type(exc).__name__}: {str(exc)[:300]}")}
            return {name: self.score_many({name: texts})[name] for name, texts in probes.items()}
        out, at = {}, 0
        for name in probes:
            mine = values[at:at + len(pairs[name])]
            at += len(mine)
            judged = [float(v) for v in mine if v is not None]
            out[name] = ((sum(judged) / len(judged) if judged else None), len(judged), len(mine), None)
        return out

    # -- gold --------------------------------------------------------------------------------------------
    def gold_texts(self) -> tuple[str | None, Callable[[int], str | None]]:
        """The gold format the reward scores highest and a function row -> gold completion in it."""
        declared = getattr(self.fn, PROBE_GOLD, None)
        if callable(declared):
            return "declared by the reward", lambda i: declared(self.rows[i])
        best, best_score = None, None
        candidates = {name: [self._fmt(fmt, i) for i in range(len(self.rows))] for name, fmt in FORMATS.items()}
        for name, (score, _, _, _) in self.score_many(candidates).items():
            if score is not None and (best_score is None or score > best_score):
                best, best_score = name, score
        if best is None:
            return None, lambda i: None
        return best, lambda i, f=FORMATS[best]: self._fmt(f, i)

    def _fmt(self, fmt, i: int) -> str | None:
        """Row ``i``'s gold completion in format ``fmt`` (None when the format does not apply to the row)."""
        core = self.cores[i]
        try:
            return fmt(core, self.rows[i]) if core is not None or fmt not in _ANSWER_FORMATS else None
        except (KeyError, TypeError):
            return None

    def wrong_rows(self, i: int, k: int) -> list[int]:
        """Up to ``k`` other rows whose gold answer differs from row ``i``'s (their golds are wrong here)."""
        seen, out = {self.cores[i]}, []
        for j in list(range(i + 1, len(self.rows))) + list(range(i)):
            if self.cores[j] not in seen or self.cores[i] is None:
                out.append(j)
                seen.add(self.cores[j])
                if len(out) == k:
                    break
        return out


_ANSWER_FORMATS = {FORMATS[k] for k in ("bare", "####", "boxed", "answer is", "answer tag", "think+answer")}


def _number_spray(size: int = MB) -> str:
    parts, n, total = [], 0, 0
    while total < size:
        s = f"{n} "
        parts.append(s)
        total += len(s)
        n += 1
    return "".join(parts)[:size]


CONTROL_CHARS = "\x00\x01\x07\x1b[2J\x7f\u202e\ufeff\ud800 \udfff\udc00\ud83d"  # lone surrogates included
EVAL_BAIT = ("__import__('os').system('echo rewardkit-probe') or 1/0 \\boxed{__import__('os').getpid()} "
             "#### eval(\"1/0\") <answer>().__class__.__base__.__subclasses__()</answer>")


def probe_texts(p: _Probe, gold: Callable[[int], str | None]) -> dict[str, list[str | None]]:
    """Every probe's completion per row (None where a probe does not apply to a row)."""
    n = len(p.rows)
    rng = range(n)
    golds = [gold(i) for i in rng]
    wrong = {i: p.wrong_rows(i, 3) for i in rng}
    fmt = {i: (lambda a, g=golds[i], c=p.cores[i]: g.replace(c, a) if g and c and c in g else None) for i in rng}
    distinct = list(dict.fromkeys(g for g in golds if g))[:SPRAY_CAP]

    def rotate(i, make):  # the gold among three wrong answers, at position i mod 4
        answers = [p.cores[j] for j in wrong[i]]
        if p.cores[i] is None or not answers:
            return None
        answers.insert(i % (len(answers) + 1), p.cores[i])
        return " ".join(make(a) for a in answers)

    texts = {
        "gold": golds,
        "wrong": [golds[wrong[i][0]] if wrong[i] else None for i in rng],
        "empty": [""] * n,
        "whitespace": [" \n\t \n"] * n,
        "echo prompt": [_prompt_text(r.get("prompt")) for r in p.rows],
        "format only": [fmt[i]("") for i in rng],
        "empty tags": ["<think></think>\n<answer></answer>"] * n,
        "empty boxed": ["\\boxed{}"] * n,
        "empty fence": ["```python\n```"] * n,
        "spray all golds": [" ".join(distinct) if distinct else None] * n,
        "gold + contradictions": [" ".join([golds[i]] + [golds[j] for j in wrong[i]]) if golds[i] and wrong[i]
                                  else None for i in rng],
        "several boxed": [rotate(i, lambda a: f"\\boxed{{{a}}}") for i in rng],
        "several tags": [rotate(i, lambda a: f"<answer>{a}</answer>") for i in rng],
        "1 MB of numbers": [_number_spray() if i < BIG_ROWS else None for i in rng],
        "control chars": [CONTROL_CHARS] * n,
        "eval bait": [EVAL_BAIT] * n,
    }
    declared = getattr(p.fn, PROBE_COMPLETIONS, None)
    if callable(declared):
        for name, values in (declared(p.rows) or {}).items():
            if len(values) != n:
                raise RewardkitError(f"reward probe_completions returned {len(values)} completions for probe "
                                     f"'{name}', expected one per row ({n})")
            texts[f"{name} (declared)"] = list(values)
    return texts


# --------------------------------------------------------------------------- the reward contract
def check_batch(texts: dict[str, list[str | None]]) -> list[tuple[int, str, str]]:
    """(row, label, completion) scored by the contract checks: the gold, wrong and empty completions of the first
    :data:`CHECK_ROWS` rows, row by row (so the first :data:`PROCESS_ROWS` rows' are a prefix)."""
    n = min(CHECK_ROWS, len(texts["gold"]))
    return [(i, label, texts[label][i]) for i in range(n) for label in CHECK_LABELS if texts[label][i] is not None]


def _same(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is None and b is None  # "could not judge" is never the same as a number
    return math.isclose(a, b, rel_tol=TOL, abs_tol=TOL)


def _show(x: float | None) -> str:
    return "None" if x is None else f"{x:.6g}"


def _differ(ref: list, got: list, batch) -> str | None:
    """None when ``got`` holds ``ref``'s scores, None where it has None; else what differs."""
    bad = [k for k, (a, b) in enumerate(zip(ref, got, strict=True)) if not _same(a, b)]
    if not bad:
        return None
    i, label, _ = batch[bad[0]]
    return (f"{len(bad)} of {len(ref)} scores differ (first: row {i} {label}, {_show(ref[bad[0]])} then "
            f"{_show(got[bad[0]])})")


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:200]}"


def _mean(values: list) -> float | None:
    judged = [v for v in values if v is not None]
    return sum(judged) / len(judged) if judged else None


_CHILD = "import sys; from rewardkit.probe import _score_in_child; _score_in_child(sys.argv[1])"


class _Child:
    """The batch's first :data:`PROCESS_ROWS` rows scored by a fresh copy of the reward in a new interpreter with
    another hash seed: started before the probes are scored, read after them, killed (its process group) after
    :data:`PROCESS_TIMEOUT` seconds."""

    def __init__(self, fresh: Callable, rows: list[dict], batch: list[tuple[int, str, str]]):
        self.proc, self.note, self.dir = None, None, tempfile.mkdtemp(prefix="rewardkit-probe-")
        pairs = [(i, t) for i, _, t in batch if i < PROCESS_ROWS]
        if not pairs:
            self.note = "not run: no completion to score"
            return
        try:
            blob = pickle.dumps(sys.path + [os.getcwd()]) + pickle.dumps((fresh(), rows[:PROCESS_ROWS], pairs))
        except Exception as exc:  # noqa: BLE001 - a local function or an open resource: reported, not fatal
            self.note = f"not compared: the reward could not be copied to another process ({_describe(exc)})"
            return
        with open(os.path.join(self.dir, "in"), "wb") as f:
            f.write(blob)
        seed = os.environ.get("PYTHONHASHSEED", "")
        env = {**os.environ, "PYTHONHASHSEED": str((int(seed) + 1) % 2**32) if seed.isdigit() else "0"}
        self.start = time.monotonic()
        try:
            with open(os.path.join(self.dir, "err"), "wb") as err:
                self.proc = subprocess.Popen([sys.executable, "-c", _CHILD, self.dir], stdin=subprocess.DEVNULL,
                                             stdout=err, stderr=err, env=env, start_new_session=True)
        except OSError as exc:
            self.note = f"not run: no new interpreter ({_describe(exc)})"

    def result(self) -> tuple[list | None, str | None]:
        """(the scores, None) or (None, why there are none)."""
        if self.proc is None:
            return None, self.note
        exited = self._exited(self.start + PROCESS_TIMEOUT)
        self.close()
        if not exited:
            return None, f"not compared: the fresh process gave no scores within {PROCESS_TIMEOUT:.0f} s"
        try:
            with open(os.path.join(self.dir, "out")) as f:
                return json.load(f), None
        except OSError:
            with open(os.path.join(self.dir, "err"), errors="replace") as f:
                tail = (f.read().strip().splitlines() or ["no output"])[-1]
            return None, f"not compared: the fresh process failed ({tail[:200]})"

    def _exited(self, deadline: float) -> bool:
        """Wait until the interpreter exits or ``deadline``; it stays unreaped, holding its process group."""
        if not hasattr(os, "waitid"):  # macOS: reaped here, so what it started is left to end by itself
            try:
                return self.proc.wait(timeout=max(0.0, deadline - time.monotonic())) is not None
            except subprocess.TimeoutExpired:
                return False
        while not os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def close(self) -> None:
        """End the interpreter and whatever it started (its process group, held until it is reaped here)."""
        if self.proc is not None and self.proc.returncode is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()

    def remove(self) -> None:
        self.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def _score_in_child(folder: str) -> None:
    """The fresh interpreter of :class:`_Child`: unpickle the reward and its batch, score it, write the scores."""
    with open(os.path.join(folder, "in"), "rb") as f:
        sys.path[:] = pickle.load(f)
        reward, rows, pairs = pickle.load(f)
    values = _Probe(reward, rows, None)._call(pairs)
    with open(os.path.join(folder, "out"), "w") as f:
        json.dump([None if v is None else float(v) for v in values], f)


def _attempt(fn: Callable) -> tuple[list | None, str | None]:
    try:
        return fn(), None
    except Exception as exc:  # noqa: BLE001 - the reward raised: the check is reported as not run
        return None, f"not run: the reward raised ({_describe(exc)})"


def _judges_correctness(judges: str, gold: float | None, wrong: float | None) -> tuple[str | None, str | None]:
    """(finding, note) of ``check: judges correctness``."""
    if judges != "correctness":
        return None, f"not required: declared judges_only = {judges!r} (held to the probes of that rule)"
    if gold is None or wrong is None:
        return None, "not compared: the gold or the wrong control was not judged"
    if earns_gold(wrong, gold):
        return (f"a wrong answer earns {wrong:.3f} against the gold's {gold:.3f}: this reward does not judge "
                f"correctness (a format or length term declares judges_only; a reward whose gold format the probe "
                f"does not find declares probe_gold)"), None
    return None, None


def _invariance(p: "_Probe", batch, child: _Child) -> tuple[list[tuple[str, str | None, str | None]], list | None]:
    """(check, finding, note) of the same scores on a repeated call, split, in another order, in a fresh process;
    and the first call's scores (None if the reward raised)."""
    pairs = [(i, t) for i, _, t in batch]
    ref, why = _attempt(lambda: p._call(pairs)) if pairs else (None, "not run: no completion to score")
    again, why = (None, why) if why else _attempt(lambda: p._call(pairs))
    if why:
        return [(name, None, why) for name in ("repeated call", "batch split", "batch order", "fresh process")], None
    differ = _differ(ref, again, batch)
    out = [("repeated call", differ and f"not deterministic: {differ}", None)]
    if differ:
        note = "not compared: a repeated call already scores differently"
        return out + [(name, None, note) for name in ("batch split", "batch order", "fresh process")], ref
    cuts = sorted({0, 1, len(pairs) // 2, len(pairs)})
    got, why = _attempt(lambda: [v for a, b in zip(cuts, cuts[1:]) for v in p._call(pairs[a:b])])
    split = None if why else _differ(ref, got, batch)
    out.append(("batch split", split and (
        f"depends on how the batch is split ({len(pairs)} in one call, then {len(cuts) - 1} calls): {split}"), why))
    back, why = _attempt(lambda: p._call(pairs[::-1])[::-1])
    order = None if why else _differ(ref, back, batch)
    out.append(("batch order", order and f"depends on the order of the batch (reversed): {order}", why))
    values, why = child.result()
    if why is None and (split or order):
        why = "not compared: the scores already depend on the batch"
    differ = None if why else _differ(ref[:len(values)], values, batch)
    out.append(("fresh process", differ and f"scores differently in a new interpreter (another hash seed): {differ}",
                why))
    return out, ref


def _shuffled_golds(p: "_Probe", batch, ref: list | None, columns: list[str]) -> tuple[float | None, str | None,
                                                                                       str | None]:
    """(shuffled mean, finding, note) of ``check: shuffled golds``: the gold completions scored again with the
    columns the reward declares taken from a row whose gold differs; the mean must drop."""
    if not columns:
        return None, None, "not required: the reward declares no dataset column"
    if ref is None:
        return None, None, "not run: the checks' batch was not scored"
    swaps = [(k, i, p.wrong_rows(i, 1)) for k, (i, label, _) in enumerate(batch) if label == "gold"]
    swaps = [(k, i, js[0]) for k, i, js in swaps if js]
    if not swaps:
        return None, None, "not compared: every row has the same gold"
    rows = [{**p.rows[i], **{c: p.rows[j][c] for c in columns if c in p.rows[j]}} for _, i, j in swaps]
    got, why = _attempt(lambda: _Probe(p.reward, rows, None)._call([(m, batch[k][2]) for m, (k, _, _) in
                                                                     enumerate(swaps)]))
    if why:
        return None, None, why
    own, other = _mean([ref[k] for k, _, _ in swaps]), _mean(got)
    if own is None or other is None:
        return other, None, "not compared: the gold completions were not judged"
    if other < own and not _same(other, own):
        return other, None, None
    return other, (f"the gold completions score {other:.3f} with another row's {', '.join(columns)} against "
                   f"{own:.3f} with their own: the score ignores the gold it reads"), None


def contract_checks(p: "_Probe", batch, child: _Child, judges: str, gold: float | None, wrong: float | None,
                    columns: list[str]) -> list[tuple[str, float | None, str | None, str | None]]:
    """(check, score, finding, note) of every check of the reward as a whole (see the module's docstring)."""
    finding, note = _judges_correctness(judges, gold, wrong)
    out = [("judges correctness", wrong, finding, note)]
    invariance, ref = _invariance(p, batch, child)
    out += [(name, None, finding, note) for name, finding, note in invariance]
    if judges != "correctness":
        shuffled = None, None, f"not required: declared judges_only = {judges!r}"
    elif finding:
        shuffled = None, None, "not compared: a wrong answer already earns the gold"
    else:
        shuffled = _shuffled_golds(p, batch, ref, columns)
    return out + [("shuffled golds", *shuffled)]


# --------------------------------------------------------------------------- recipe level
def probe_reward(stage: str, block, reward, rows: list[dict], gold_column: str | None, *,
                 columns: list[str] | None = None, judges: str = "correctness",
                 fresh: Callable | None = None) -> RewardReport:
    """Run every probe and every check against one built reward; the first two results are the controls.

    ``columns``: the dataset columns the reward declares (shuffled by ``check: shuffled golds``); ``judges``: what
    it declares it judges (:func:`declared_judges`); ``fresh``: builds another copy of it, for the fresh process
    (default: this one, pickled).
    """
    report = RewardReport(stage, block.alias, block.name, getattr(reward, "provider", ""), len(rows), judges=judges)
    p = _Probe(reward, rows, gold_column)
    report.gold_format, gold = p.gold_texts()
    texts = probe_texts(p, gold)
    batch = check_batch(texts)
    child = _Child(fresh or (lambda: reward), rows, batch)
    try:
        scored = p.score_many(texts)
        errors = [e for _, _, n, e in scored.values() if n]
        if errors and all(errors):  # it raised on everything: it cannot run here (e.g. its model is not trained yet)
            report.skipped = f"the reward raised on every probe: {errors[0]}"
            return report
        gold_score, wrong_score = scored["gold"][0], scored["wrong"][0]
        for name, (score, judged, n, error) in scored.items():
            if n == 0 and error is None:
                continue  # the probe does not apply to these rows (e.g. no gold column)
            why = None
            if name in CONTROLS:
                pass
            elif name in KIND_PROBES.get(judges, ()) and earns_gold(score, gold_score):
                why = KIND_WHY[judges]
            elif is_exploit(score, gold_score, wrong_score):
                why = EXPLOIT_WHY
            report.results.append(ProbeResult(stage, block.alias, name, score, gold_score, why is not None, judged,
                                              n, error, why))
        for name, score, finding, note in contract_checks(p, batch, child, judges, gold_score, wrong_score,
                                                          list(columns or [])):
            report.results.append(ProbeResult(stage, block.alias, CHECK + name, score, gold_score,
                                              finding is not None, detail=finding or note))
        return report
    finally:
        child.remove()


def _gold_column(cols: list[str], row: dict) -> str | None:
    for c in list(cols) + ["answer"]:
        if c in row and isinstance(row[c], (str, int, float)):
            return c
    return None


def probe_recipe(recipe, registry, rows: int = ROWS) -> list[RewardReport]:
    """Probe every reward of every RL stage of a validated recipe; no policy model is loaded."""
    import datasets  # noqa: PLC0415

    from rewardkit.data import load_data  # noqa: PLC0415

    datasets.disable_progress_bars()
    reports: list[RewardReport] = []
    for spec in recipe.stages:
        if not spec.rewards:
            continue
        try:
            dd = load_data(recipe, spec.data, registry, f"stages.{spec.name}.data")
            train = dd["train"]
            data_rows = [dict(r) for r in train.select(range(min(rows, len(train))))]
        except Exception as exc:  # noqa: BLE001 - a hub dataset offline, a missing file: reported, not fatal
            for block in spec.rewards:
                reports.append(RewardReport(spec.name, block.alias, block.name,
                                            skipped=f"dataset not loaded: {type(exc).__name__}: {str(exc)[:200]}"))
            continue
        for block in spec.rewards:
            def build(block=block):
                return registry.build_reward(block.name, block.params, block.alias, spec.reward_faults)
            try:
                reward = build()
            except RewardkitError as exc:
                reports.append(RewardReport(spec.name, block.alias, block.name,
                                            skipped=f"reward not built: {exc}"))
                continue
            judges = declared_judges(reward, registry.load("rewards", block.name), block.alias)
            try:
                cols = registry.reward_columns(block.name, block.params)
            except RewardkitError:
                cols = []
            gold_column = _gold_column(cols, data_rows[0]) if data_rows else None
            reports.append(probe_reward(spec.name, block, reward, data_rows, gold_column, columns=cols,
                                        judges=judges, fresh=build))
    return reports


# --------------------------------------------------------------------------- output
def _fmt_score(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _verdict(r: ProbeResult) -> str:
    if r.probe.startswith(CHECK):
        return f"FINDING: {r.detail}" if r.exploit else r.detail or "ok"
    if r.error:
        return f"RAISED: {r.error[:120]}"
    if r.probe in CONTROLS:
        return "control"
    if r.score is None:
        return f"could not judge ({r.n}/{r.n} None)"
    if r.gold_score is None:
        return "no gold score"
    note = f" ({r.n - r.judged} of {r.n} None)" if r.judged < r.n else ""
    if r.exploit and r.detail != EXPLOIT_WHY:
        return f"EXPLOIT: {r.detail}{note}"
    return ("EXPLOIT" if r.exploit else "ok") + note


def format_reports(reports: list[RewardReport]) -> str:
    if not reports:
        return "no stage of this recipe takes rewards: nothing to probe"
    lines = []
    for rep in reports:
        head = f"stage {rep.stage}, reward {rep.reward}"
        head += f" ({rep.name})" if rep.name != rep.reward else ""
        if rep.skipped:
            lines += [head, f"  skipped: {rep.skipped}", ""]
            continue
        lines.append(f"{head}: {rep.rows} rows, gold format: {rep.gold_format or 'none found'}"
                     + (f", declared judges_only = {rep.judges!r}" if rep.judges != "correctness" else "")
                     + (f"; {len(rep.findings)} finding(s)" if rep.findings else ""))
        for title, rows in (("probe", [r for r in rep.results if not r.probe.startswith(CHECK)]),
                            ("check", [r for r in rep.results if r.probe.startswith(CHECK)])):
            lines.append(f"  {title:<40} {'score':>7} {'gold':>7}  verdict")
            for r in rows:
                name = r.probe[len(CHECK):] if title == "check" else r.probe
                lines.append(f"  {name:<40} {_fmt_score(r.score):>7} {_fmt_score(r.gold_score):>7}  {_verdict(r)}")
        lines.append("")
    return "\n".join(lines)


def as_json(reports: list[RewardReport]) -> str:
    return json.dumps([r.as_dict() for rep in reports for r in rep.results], indent=2)
