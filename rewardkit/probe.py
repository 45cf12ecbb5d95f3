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
  :data:`rewardkit.probe_contract.CHECK_ROWS` rows: the same scores on a ``repeated call``, in a ``batch split`` (one call, then three),
  in another ``batch order`` (reversed, results put back), and in a ``fresh process`` (a new interpreter with
  another hash seed scores the first :data:`~rewardkit.probe_contract.PROCESS_ROWS` rows, bounded by :data:`~rewardkit.probe_contract.PROCESS_TIMEOUT`); and
  ``shuffled golds``: a correctness reward that declares dataset columns scores its gold completions lower
  once those columns come from other rows.

``None`` ("could not judge") is left out of a mean and reported, never read as 0; the contract checks compare
where ``None`` falls as well as the numbers.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Callable

from rewardkit.errors import PluginError, RewardkitError
from rewardkit.hookspecs import JUDGES_ONLY_VALUES, REWARD_JUDGES_ONLY, REWARD_PROBE_ATTRIBUTES
from rewardkit.probe_contract import Child, check_batch, contract_checks, earns_gold

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
    child = Child(fresh or (lambda: reward), rows, batch)
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
        if getattr(spec, "environment", None) and data_rows:  # its tools and multi-turn episodes
            from rewardkit.probe_episodes import probe_environment  # noqa: PLC0415

            cols = registry.reward_columns(spec.rewards[0].name, spec.rewards[0].params)
            reports += probe_environment(spec, registry, data_rows, _gold_column(cols, data_rows[0]))
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
