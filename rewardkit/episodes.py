"""Multi-turn episodes outside training: held-out evaluation, early stopping and probes of a tool-using policy.

Training runs TRL's own tool loop (rewardkit.environments). Evaluation cannot: TRL's loop lives inside
``GRPOTrainer._generate``. :class:`EpisodeGenerator` is rewardkit's own loop with the same rules, so a model is
judged as it was trained: the prompt is rendered with the tools' schemas, a turn is parsed with TRL's
``parse_response`` (the tokenizer's ``response_template``), every call runs on a fresh environment instance
``reset`` with the dataset row, a tool that raises gives ``{'error': ...}`` as its result (TRL's format), and the
episode ends at a turn without calls, after ``max_tool_calls`` tool-calling turns, or when the prompt plus every
later token (the model's and the tools') would pass ``max_new_tokens`` (TRL's ``max_completion_length`` rule).

An :class:`~rewardkit.environments.EnvironmentFault` in an episode is never scored: the generator records it and
raises :class:`EpisodeFaultError` once the batch is done (a held-out score with unjudged episodes silently left
out would not be comparable between stages).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable

from rewardkit.environments import DEFAULT_MAX_TOOL_CALLS, tool_names
from rewardkit.errors import RewardkitError


class EpisodeFaultError(RewardkitError):
    """An environment failed during evaluation episodes (not the model's fault). A RewardkitError, so the CLI
    prints its one-line message and exits with code 2 instead of a traceback."""


@dataclass
class Episode:
    messages: list  # the prompt's messages, then every assistant turn and tool result
    env: Any
    prompt_len: int  # tokens of the rendered prompt
    used: int = 0  # tokens after the prompt so far (model and tools)
    calls: int = 0  # tool-calling turns
    done: bool = False
    transcript: list = field(default_factory=list)

    @property
    def final(self) -> str:
        last = next((m for m in reversed(self.messages) if m["role"] == "assistant"), None)
        return (last or {}).get("content") or ""


def _tools_of(env) -> list[Callable]:
    return [getattr(env, n) for n in tool_names(type(env))]


def _call(tools: dict, call: dict) -> tuple[str, Any]:
    fn = call.get("function", call)
    name = fn.get("name", "unknown")
    try:
        if name not in tools:
            raise ValueError(f"Tool {name} not found.")
        args = fn.get("arguments") or {}
        result = tools[name](**args) if isinstance(args, dict) else tools[name](args)
    except Exception as exc:  # noqa: BLE001 - the model's fault: shown as TRL shows it
        result = {"error": str(exc)}
    return name, result


class EpisodeGenerator:
    """Callable like :func:`rewardkit.evaluate.generate` (``prompts`` -> the final answer text of each episode) for
    the environment ``factory`` (a zero-argument callable); ``rows`` are the dataset rows in prompt order (reset's
    keyword arguments). Episodes of the last call are kept in ``episodes``."""

    def __init__(self, factory: Callable, rows: list[dict] | None = None,
                 max_tool_calls: int = DEFAULT_MAX_TOOL_CALLS):
        self.factory, self.rows, self.max_tool_calls = factory, rows, max_tool_calls
        self.episodes: list[Episode] = []
        self.first: list[Episode] = []  # the first call's episodes (greedy, in an evaluation)

    def with_rows(self, rows: list[dict]) -> "EpisodeGenerator":
        return EpisodeGenerator(self.factory, rows, self.max_tool_calls)

    def _start(self, tokenizer, prompt: list, row: dict) -> Episode:
        env = self.factory()
        observation = env.reset(**row)
        messages = [dict(m) for m in prompt]
        if isinstance(observation, str):
            messages[-1]["content"] = messages[-1]["content"] + observation
        ids = tokenizer.apply_chat_template(messages, tools=_tools_of(env) or None, add_generation_prompt=True,
                                            tokenize=True, return_dict=False)
        return Episode(messages, env, len(ids))

    def __call__(self, model, tokenizer, prompts: list, max_new_tokens: int, batch_size: int = 64,
                 temperature: float | None = None) -> list[str]:
        rows = self.rows if self.rows is not None else [{} for _ in prompts]
        if len(rows) != len(prompts):  # sampled evaluation repeats each prompt; so are its rows
            k = len(prompts) // len(rows)
            rows = [r for r in rows for _ in range(k)]
        self.episodes = [self._start(tokenizer, p, dict(r, prompt=p)) for p, r in zip(prompts, rows)]
        for _ in range(self.max_tool_calls + 1):
            live = [e for e in self.episodes if not e.done]
            if not live:
                break
            for i in range(0, len(live), batch_size):
                self._turn(model, tokenizer, live[i:i + batch_size], max_new_tokens, temperature)
        for e in self.episodes:
            e.done = True
        self.first = self.first or self.episodes
        faults = [e.env.fault for e in self.episodes if getattr(e.env, "fault", None)]
        if faults:
            raise EpisodeFaultError(f"{len(faults)} evaluation episode(s) hit an environment fault (not scored): "
                                    f"{faults[0]}")
        return [e.final for e in self.episodes]

    def _turn(self, model, tokenizer, batch: list[Episode], max_new_tokens: int, temperature) -> None:
        """One generation turn for ``batch``, then its tool calls."""
        import torch  # noqa: PLC0415
        from trl.chat_template_utils import parse_response  # noqa: PLC0415

        texts = [tokenizer.apply_chat_template(e.messages, tools=_tools_of(e.env) or None,
                                               add_generation_prompt=True, tokenize=False) for e in batch]
        side, tokenizer.padding_side = tokenizer.padding_side, "left"
        try:
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        finally:
            tokenizer.padding_side = side
        budget = max(1, max(max_new_tokens - e.used for e in batch))
        sampling = ({"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0} if temperature
                    else {"do_sample": False})
        was_training = model.training
        model.eval()
        with torch.no_grad():
            gen = model.generate(**enc, **sampling, max_new_tokens=budget, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id)
        model.train(was_training)
        width = enc["input_ids"].shape[1]
        for e, row_ids, prompt_ids in zip(batch, gen[:, width:].tolist(), enc["input_ids"].tolist()):
            ids = _until_eos(row_ids, tokenizer)[:max(0, max_new_tokens - e.used)]
            e.used += len(ids)
            prompt_ids = [t for t in prompt_ids if t != tokenizer.pad_token_id]
            turn = parse_response(tokenizer, ids, prefix=prompt_ids, tools=_tools_of(e.env))
            self._after_turn(e, tokenizer, turn, ids, max_new_tokens)

    def _after_turn(self, e: Episode, tokenizer, turn: dict, ids: list[int], max_new_tokens: int) -> None:
        e.messages.append({k: v for k, v in turn.items() if k in ("role", "content", "tool_calls")})
        e.transcript.append({"assistant": tokenizer.decode(ids)})
        calls = turn.get("tool_calls")
        if not calls or e.calls >= self.max_tool_calls or e.used >= max_new_tokens:
            e.done = True
            return
        e.calls += 1
        tools = {fn.__name__: fn for fn in _tools_of(e.env)}
        for call in calls:
            name, result = _call(tools, call)
            if getattr(e.env, "fault", None):
                e.done = True
                return
            content = result if isinstance(result, list) else str(result)
            e.messages.append({"role": "tool", "name": name, "content": content})
            failed = isinstance(result, dict) and "error" in result
            e.transcript.append({"tool": name, "arguments": (call.get("function") or {}).get("arguments"),
                                 ("error" if failed else "result"): content})
        rendered = tokenizer.apply_chat_template(e.messages, tools=_tools_of(e.env) or None,
                                                 add_generation_prompt=True, tokenize=True, return_dict=False)
        e.used = len(rendered) - e.prompt_len
        if e.used >= max_new_tokens:  # TRL drops a tool result that would pass the budget and ends there
            e.messages = e.messages[:len(e.messages) - len(calls)]
            e.done = True


def _until_eos(ids: list[int], tokenizer) -> list[int]:
    out = []
    for t in ids:
        if t == tokenizer.pad_token_id:
            break
        out.append(t)
        if t == tokenizer.eos_token_id:
            break
    return out


def tool_use_stats(episodes: list[Episode]) -> dict:
    """Tool calls per episode, and the share of tool calls that failed (malformed arguments, unknown tool, a raise:
    what the model read as ``{'error': ...}``)."""
    n = max(1, len(episodes))
    errors = sum(1 for e in episodes for t in e.transcript if "error" in t)
    calls = sum(1 for e in episodes for t in e.transcript if "tool" in t)
    return {"tool_calls_per_episode": calls / n, "tool_error_rate": errors / calls if calls else 0.0}


def write_transcripts(episodes: list[Episode], path: str, limit: int = 5) -> str:
    """The first ``limit`` episodes, readable, as JSON lines in ``path``."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        for e in episodes[:limit]:
            f.write(json.dumps({"messages": e.messages, "turns": e.transcript, "tool_calls": e.calls,
                                "tokens": e.used}, default=str) + "\n")
    return path




# --------------------------------------------------------------------------- a recipe's held-out evaluation
def from_recipe(recipe, registry) -> "EpisodeGenerator | None":
    """Held-out evaluation (and early stopping) of a recipe one of whose stages has an ``environment``: episodes in
    the first such stage's environment, with its tool-call limit; None when no stage has one (single turns)."""
    from rewardkit.environments import (  # noqa: PLC0415
        episode_factory, episode_tokens, evaluation_stage, tool_call_limit)

    spec = evaluation_stage(recipe)
    if spec is None:
        return None

    tokens = recipe.eval.max_new_tokens if recipe.eval else episode_tokens(spec)
    return EpisodeGenerator(episode_factory(spec, registry, tokens), max_tool_calls=tool_call_limit(spec))


class EvaluationEpisodes:
    """What the pipeline's evaluator uses for one evaluation: ``generate_fn`` for :func:`rewardkit.evaluate.evaluate`
    on ``dataset`` (its first ``n`` rows), then :meth:`finish` adds the greedy episodes' tool use to the result and
    writes a few transcripts to ``<output_dir>/episodes/eval-<k>.jsonl``."""

    def __init__(self, generator: EpisodeGenerator, dataset, n: int | None, output_dir: str, counter: list):
        rows = dataset.select(range(min(n, len(dataset)))) if n is not None else dataset
        self.generate_fn = generator.with_rows([dict(r) for r in rows])
        counter[0] += 1
        self.path = os.path.join(output_dir, "episodes", f"eval-{counter[0]}.jsonl")

    def finish(self, result: dict) -> dict:
        greedy = self.generate_fn.first
        result.update(tool_use_stats(greedy))
        result["transcripts"] = write_transcripts(greedy, self.path)
        return result
