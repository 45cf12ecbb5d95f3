"""``rewardkit probe`` for a stage with an ``environment``: its tools and its rewards attacked with scripted
episodes, no model loaded (rewardkit.probe prints the report with the reward probes').

Reward probes (each a multi-turn completion per row, scored by each of the stage's rewards as training scores it,
through the environment guard; an exploit when it earns the gold and more than a wrong answer, as in probe.py):

- ``gold``: call a tool, read the gold in its result, answer with it (the control); ``wrong``: the same episode
  answering another row's gold (the other control; it must not earn the gold: ``check: judges the model's
  answer``, which fails for a reward that reads what a tool returned);
- ``answer left in the tool result``: the episode ends on a tool result that holds the gold (TRL drops a final turn
  cut to nothing): what a tool returned must not be read as the model's answer;
- ``malformed tool call``: the final turn is a call the parser could not read, with the gold inside it;
- ``tool result echoed in the call``: the gold inside the call's arguments, the final answer wrong.

Checks of the environment itself (a finding when they fail):

- ``tools raise, not hang``: every tool called with missing, empty, huge and extreme arguments returns or raises
  within :data:`TOOL_DEADLINE` seconds, and a raise is the model's error (an ``Exception``), not an
  ``EnvironmentFault`` (which would make the episode unjudged for a mere bad argument).

That every episode ends is not probed here: ``validate`` refuses a stage whose tool-calling turns are unbounded
(``max_tool_calling_iterations`` outside 1 to 64, null included) and rewardkit sets the default when it is unset.
"""

from __future__ import annotations

import json
import threading

from rewardkit.environments import EnvironmentFault, episode_factory, episode_tokens, guard_rewards, tool_names

TOOL_DEADLINE = 30.0  # seconds one adversarial tool call may take
HUGE = "9" * 100_000
_ARGS = {"string": ["", HUGE, "'; import os; os.system('true') #", "\x00\ud800"], "integer": [0, -1, 10 ** 30],
         "number": [0.0, -1e308, float("nan")], "boolean": [True], "array": [[]], "object": [{}]}


def _schema(fn) -> dict:
    from transformers.utils import get_json_schema  # noqa: PLC0415

    return get_json_schema(fn)["function"]["parameters"]


def adversarial_calls(fn) -> list[dict]:
    """Argument sets for tool ``fn``: none at all, then each parameter through its type's extremes (others at
    their first value)."""
    props = _schema(fn).get("properties", {})
    base = {k: _ARGS.get(p.get("type"), [None])[0] for k, p in props.items()}
    calls = [{}]
    for key, prop in props.items():
        calls += [{**base, key: v} for v in _ARGS.get(prop.get("type"), [None])]
    return calls


def _run_with_deadline(fn, args: dict, deadline: float) -> tuple[bool, BaseException | None]:
    """Call ``fn(**args)`` in a daemon thread: (whether it returned or raised within ``deadline`` seconds, what it
    raised). A call that hangs is left behind in its daemon thread, which never keeps the interpreter from exiting
    (a ThreadPoolExecutor worker would: concurrent.futures joins its workers at exit)."""
    raised: list[BaseException] = []

    def call():
        try:
            fn(**args)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            raised.append(exc)

    worker = threading.Thread(target=call, name="rewardkit-probe-tool", daemon=True)
    worker.start()
    worker.join(deadline)
    return not worker.is_alive(), (raised[0] if raised else None)


def check_tools(env, row: dict, deadline: float = TOOL_DEADLINE) -> list[str]:
    """Findings of calling each tool of ``env`` (reset with ``row``) with :func:`adversarial_calls`."""
    findings = []
    for name in tool_names(type(env)):
        for args in adversarial_calls(getattr(env, name)):
            env.reset(**row)
            shown = json.dumps({k: (v[:20] + "..." if isinstance(v, str) and len(v) > 20 else v)
                                for k, v in args.items()}, default=str)
            done, exc = _run_with_deadline(getattr(env, name), args, deadline)
            if not done:
                findings.append(f"{name}({shown}) did not return within {deadline:g}s")
                return findings  # the environment is stuck in that call; later calls would race it
            if isinstance(exc, EnvironmentFault):
                findings.append(f"{name}({shown}) raised EnvironmentFault for a bad argument: {exc}")
            if getattr(env, "fault", None):
                findings.append(f"{name}({shown}) marked the episode unjudged: {env.fault}")
    return findings


def _call(name: str, args: dict) -> dict:
    return {"type": "function", "function": {"name": name, "arguments": args}}


def episode_texts(tool: str, args: dict, gold: str, wrong: str) -> dict[str, list[dict]]:
    """Probe name -> the completion (messages after the prompt) of one row."""
    calling = {"role": "assistant", "content": "", "tool_calls": [_call(tool, args)]}
    result = {"role": "tool", "name": tool, "content": gold}
    return {
        "gold": [calling, result, {"role": "assistant", "content": gold}],
        "wrong": [calling, result, {"role": "assistant", "content": wrong}],
        "answer left in the tool result": [calling, result],
        "malformed tool call": [calling, result, {"role": "assistant", "content": f"<|call|>{tool}{{x:{gold}"}],
        "tool result echoed in the call": [{"role": "assistant", "content": "",
                                            "tool_calls": [_call(tool, {"answer": gold})]},
                                           {"role": "tool", "name": tool, "content": "{'error': 'bad argument'}"},
                                           {"role": "assistant", "content": wrong}],
    }


def _score(reward, factory, rows: list[dict], completions: list[list[dict]], columns: dict):
    """Mean score of one probe over the rows (None left out), how many were judged, and an error if it raised."""
    envs = [factory() for _ in rows]
    for env, row in zip(envs, rows):
        env.reset(**row)
    try:
        values = reward(prompts=[r.get("prompt") for r in rows], completions=completions, environments=envs,
                        **columns)
    except Exception as exc:  # noqa: BLE001 - reported as the probe's error
        return None, 0, f"{type(exc).__name__}: {exc}"
    judged = [v for v in values if v is not None]
    return (sum(judged) / len(judged) if judged else None), len(judged), None


def probe_environment(spec, registry, rows: list[dict], gold_column: str | None) -> list:
    """One report per reward of ``spec`` (a stage with an environment): the episode probes, then the checks."""
    from rewardkit.probe import CHECK, CONTROLS, EXPLOIT_WHY, ProbeResult, RewardReport, is_exploit  # noqa: PLC0415
    from rewardkit.probe_contract import earns_gold  # noqa: PLC0415

    name = spec.environment["name"]
    factory = episode_factory(spec, registry, episode_tokens(spec))
    probe_env = factory()
    tool = (tool_names(type(probe_env)) or ["tool"])[0]
    golds = [str(r.get(gold_column, "")) if gold_column else "" for r in rows]
    texts = [episode_texts(tool, {}, g, golds[(i + 1) % len(golds)] + "1") for i, g in enumerate(golds)]
    columns = {c: [r.get(c) for r in rows] for c in (rows[0] if rows else {}) if c != "prompt"}
    findings = check_tools(probe_env, rows[0] if rows else {})
    reports = []
    for block in spec.rewards:
        reward = guard_rewards([registry.build_reward(block.name, block.params, block.alias, spec.reward_faults)])[0]
        report = RewardReport(spec.name, f"{block.alias} in environment {name}", block.name,
                              getattr(reward, "provider", ""), len(rows), gold_format="a tool-calling episode")
        scored = {p: _score(reward, factory, rows, [t[p] for t in texts], columns) for p in texts[0]} if rows else {}
        gold, wrong = (scored.get("gold") or (None,))[0], (scored.get("wrong") or (None,))[0]
        for probe, (score, judged, error) in scored.items():
            bad = probe not in CONTROLS and is_exploit(score, gold, wrong)
            report.results.append(ProbeResult(spec.name, report.reward, probe, score, gold, bad, judged, len(rows),
                                              error, EXPLOIT_WHY if bad else None))
        blind = earns_gold(wrong, gold)
        report.results.append(ProbeResult(spec.name, report.reward, CHECK + "judges the model's answer", wrong, gold,
                                          blind, detail="a wrong final answer earns the gold: the reward reads what "
                                                        "the tool returned" if blind else None))
        report.results.append(ProbeResult(spec.name, report.reward, CHECK + "tools raise, not hang", None, gold,
                                          bool(findings), detail="; ".join(findings) or None))
        reports.append(report)
    return reports
