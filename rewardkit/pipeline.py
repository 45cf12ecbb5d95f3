"""Runs a validated recipe: stages in order, each starting from the previous stage's model."""

from __future__ import annotations

import json
import os
import time
import warnings

from rewardkit import engines, models, plot, stage_cache, vllm_sync
from rewardkit import run_state as state
from rewardkit.data import load_data, split_problem, splits
from rewardkit.errors import RecipeError, RewardkitError
from rewardkit.registry import import_target
from rewardkit.report import Reporter
from rewardkit.trainers.base import LogHistoryCallback, StageContext


def _log(msg: str) -> None:
    print(f"[rewardkit] {msg}", flush=True)


class _DataCache:
    def __init__(self, recipe, registry):
        self.recipe, self.registry, self._cache = recipe, registry, {}

    def get(self, data: dict, where: str):
        key = json.dumps(data, sort_keys=True, default=str)
        if key not in self._cache:
            self._cache[key] = load_data(self.recipe, data, self.registry, where)
        return self._cache[key]


def _require_split(dataset, split: str, where: str, source: str | None = None) -> None:
    """Validation checks the splits of every dataset that declares them; this catches the others before use."""
    bad = split_problem(dataset, split, where)
    if bad:
        raise RecipeError(bad, source=source)


def _evaluator(recipe, registry):
    """``run(model, tokenizer, dataset, split, n, samples, where)``: the recipe's ``eval`` section
    (rewardkit.recipe_schema.Eval) applied to a model, or None without one."""
    ev = recipe.eval
    if not ev:
        return None
    from rewardkit.evaluate import evaluate  # noqa: PLC0415

    fn = registry.build_reward(ev.reward.name, ev.reward.params, alias="eval")
    from rewardkit import episodes  # noqa: PLC0415 - a recipe with an environment is judged on whole episodes

    tool_episodes, counter = episodes.from_recipe(recipe, registry), [0]

    def run(model, tokenizer, dataset, split=ev.split, n=ev.n, samples=ev.samples, where="eval.split"):
        _require_split(dataset, split, where)
        ep = tool_episodes and episodes.EvaluationEpisodes(tool_episodes, dataset[split], n, recipe.output_dir, counter)
        result = evaluate(model, tokenizer, dataset[split], fn, ev.max_new_tokens, ev.batch_size, n, samples,
                          ev.temperature, ev.pass_k, ev.maj_k, ev.correct_at, generate_fn=ep and ep.generate_fn)
        return ep.finish(result) if ep else result

    return run


class _Dist:
    """The process's place under ``accelerate launch`` / torchrun (one process per device or CPU slot).

    Training is collective (TRL/transformers handle it); everything that writes rewardkit's own files, prints
    the summary or evaluates is done by the main process while the others wait at a barrier.
    """

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.main = self.rank == 0
        if self.world > 1:
            import torch  # noqa: PLC0415
            from accelerate import PartialState  # noqa: PLC0415

            cpu = not torch.cuda.is_available()
            if cpu and not engines.deepspeed():  # transformers then asks accelerate for CPU processes (gloo); under
                os.environ.setdefault("ACCELERATE_USE_CPU", "true")  # DeepSpeed that would silently mean DDP
            PartialState(cpu=cpu)  # initialises the process group, so barriers work before any trainer exists

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist  # noqa: PLC0415

            if dist.is_available() and dist.is_initialized():
                dist.barrier()


def _early_stop(spec, evaluate, tokenizer, dataset, out_dir, ckpt, log, report=None):
    """The stage's held-out stopping callback (rewardkit.stopping), or None without ``early_stop:``."""
    if not spec.early_stop:
        return None
    from rewardkit import stopping  # noqa: PLC0415

    block, where = spec.early_stop, f"stages.{spec.name}.early_stop.split"
    _require_split(dataset, block.split, where)  # before training starts, not at the first evaluation

    def score(model):
        return evaluate(model, tokenizer, dataset, split=block.split, n=block.n, samples=0, where=where)["score"]

    return stopping.callback(block, score, lambda msg: log(f"stage '{spec.name}' early_stop: {msg}"),
                             os.path.join(out_dir, "early_stop.json"), ckpt[0] if ckpt else None, report)


# --------------------------------------------------------------------------- the run
def run(recipe, registry, resume: str = "auto", observe_rewards=None) -> dict:
    """Train every stage; return (and write to ``output_dir/summary.json``) what happened.

    ``resume``: ``"auto"`` continues from what ``output_dir`` holds (finished stages are reused, an
    interrupted stage continues from its last complete checkpoint), ``"require"`` does the same but fails
    when there is nothing to continue, ``"never"`` removes this recipe's previous stage outputs first.
    ``observe_rewards(spec, rewards)``, when given, sees each stage's built reward functions before training
    (``rewardkit run --smoke`` keeps their scores).
    """
    if resume not in state.RESUME_MODES:
        raise ValueError(f"resume must be one of {state.RESUME_MODES}, got {resume!r}")
    r = _Run(recipe, registry, observe_rewards)
    plans = r.plan(resume)
    r.evaluate_base()
    cache = stage_cache.cache_dir()
    for p in plans:  # --fresh (resume "never") trains every stage: it stores in the cache but does not read it
        if p.done and not r.trained_earlier:  # once a stage trains in this run, later stages on disk are stale
            r.reuse(p)
            continue
        with stage_cache.claim(p, cache):  # another run training this stage finishes first; then it is a hit
            if cache and resume != "never" and r.restore(p, cache):
                r.reuse(p, cached=True)
            else:
                r.train(p)
                if cache:
                    stage_cache.store(p, cache, r.summary.get("health", {}).get(p.spec.name))
    return r.finish()


class _Run:
    """One run of a recipe, as the steps ``run`` calls in order: plan, evaluate_base, then reuse or train each
    stage, finish. ``previous`` is the policy the next stage starts from; ``summary`` is saved after each step."""

    def __init__(self, recipe, registry, observe_rewards=None):
        import datasets  # noqa: PLC0415
        from transformers import set_seed  # noqa: PLC0415

        datasets.disable_progress_bars()  # keep the trainers' progress bars readable
        # transformers 5.x deprecation notices that TRL triggers on every stage; nothing a user can act on.
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*checkpointing.*")
        self.recipe, self.registry = recipe, registry
        self.dist = _Dist()
        self.log = _log if self.dist.main else (lambda msg: None)
        set_seed(recipe.seed)
        self.out = recipe.output_dir
        self.summary_path = os.path.join(self.out, state.SUMMARY_FILE)
        self.summary = {"recipe": recipe.path, "output_dir": self.out, "stages": [], "eval": [], "complete": False}
        self.previous_summary: dict = {}
        self.previous: str | None = None
        self.trained_earlier = False
        self.start = time.time()
        self.data = _DataCache(recipe, registry)
        self.evaluate = _evaluator(recipe, registry)
        self.observe_rewards = observe_rewards

    def save_summary(self) -> None:
        if self.dist.main:
            state.write_json(self.summary_path, self.summary)

    def plan(self, resume: str) -> list:
        """What is on disk, checked against the recipe before anything loads; every refusal comes before the
        first change on disk (``--fresh`` removing the previous stages, the output directory made)."""
        problems = engines.problems(self.recipe) + state.output_problems(self.recipe)  # again: --smoke's -smoke dir
        if problems:
            raise RecipeError(problems, source=self.recipe.path)
        if self.evaluate and splits(self.recipe.data, self.registry) is None:  # not declared: load it to know
            _require_split(self.data.get(self.recipe.data, "data"), self.recipe.eval.split, "eval.split",
                           self.recipe.path)
        if resume == "never" and self.dist.main:
            state.clear_previous(self.recipe)
        self.dist.barrier()
        plans, resuming = state.plan(self.recipe, resume)
        if self.dist.main:
            try:
                os.makedirs(self.out, exist_ok=True)
            except OSError as exc:  # checked above; something changed on disk since
                raise RecipeError(f"output_dir: cannot create {self.out}: {exc.strerror or exc}",
                                  source=self.recipe.path) from None
        self.previous_summary = (state.read_json(self.summary_path) or {}) if resuming else {}
        return plans

    def evaluate_base(self) -> None:
        """Build an embedded base model once (main process first), then score it unless a previous run did."""
        recipe = self.recipe
        if self.dist.main:
            models.resolve(recipe.model["name"], self.registry, recipe)
        self.dist.barrier()
        model_path = models.resolve(recipe.model["name"], self.registry, recipe)
        if not self.evaluate:
            return
        from transformers import AutoTokenizer  # noqa: PLC0415

        key = state.eval_key(recipe, recipe.data)
        old = [r for r in self.previous_summary.get("eval", []) if r.get("after") == "base" and r.get("key") == key]
        if old:
            self.summary["eval"].append(old[0])
            self.log(f"base model: held-out score {old[0]['score']:.1%} (from the previous run)")
        elif self.dist.main:
            base = models.load_for_inference(model_path, recipe.model)
            result = self.evaluate(base, AutoTokenizer.from_pretrained(model_path), self.data.get(recipe.data, "data"))
            del base
            self.summary["eval"].append({"after": "base", **result, "key": key})
            self.log(f"base model: held-out score {result['score']:.1%} on {result['n']} examples")
        self.dist.barrier()
        self.save_summary()

    def restore(self, p, cache: str) -> bool:
        """Copy the stage from the stage cache (rewardkit.stage_cache) if it holds it and nothing is on disk."""
        if p.ckpt or not stage_cache.restore(p, cache):
            return False
        health = stage_cache.health(p, cache)
        if health is not None:
            self.previous_summary.setdefault("health", {})[p.spec.name] = health
        return True

    def reuse(self, p, cached: bool = False) -> None:
        """A stage a previous run (or the stage cache) finished with this configuration: its result, health and
        score are taken over (the score is recomputed only if the eval section changed since)."""
        spec, info = p.spec, p.state["info"]
        source = f"the stage cache {stage_cache.cache_dir()}" if cached else "a previous run"
        self.log(f"stage '{spec.name}': finished in {source} ({info['steps']} steps), not trained again")
        self.summary["stages"].append({**info, "previous_run": True, **({"stage_cache": True} if cached else {})})
        if spec.name in self.previous_summary.get("health", {}):
            self.summary.setdefault("health", {})[spec.name] = self.previous_summary["health"][spec.name]
        policy = info.get("produces_policy", True)
        if self.evaluate and spec.evaluate and policy:
            key = state.eval_key(self.recipe, spec.data)
            row = p.state.get("eval") if (p.state.get("eval") or {}).get("key") == key else None
            if row is None and self.dist.main:
                from transformers import AutoTokenizer  # noqa: PLC0415

                model = models.load_for_inference(info["model_dir"], spec.model)
                tok = AutoTokenizer.from_pretrained(info["model_dir"])
                row = {"after": spec.name, **self.evaluate(model, tok, self.data.get(spec.data, spec.name)),
                       "key": key}
                del model
            if row is not None:
                self.summary["eval"].append(row)
            self.dist.barrier()
        self.previous = info["model_dir"] if policy else self.previous
        self.save_summary()

    def train(self, p) -> None:
        """Train one stage (from its checkpoint if it has one), save its model, score it, record it done."""
        import torch  # noqa: PLC0415

        stage_start, spec = time.time(), p.spec
        if self.trained_earlier:
            p.ckpt = None
        stage_cls, ctx, log_cb, stopper = self._context(p)  # may refuse (a split): before the stage dir changes
        if self.dist.main:
            state.prepare_resume(p, self.log)
        self.dist.barrier()
        stage = stage_cls()
        trainer = stage.build_trainer(ctx)
        try:
            rollouts, health = _attach(stage_cls, trainer, ctx)
            ctx.report.bind(trainer)  # report_to's integrations: rewardkit's own metrics go to them too
            models.keep_4bit_trainable(trainer.model)
            trainer.train(resume_from_checkpoint=p.ckpt[1] if p.ckpt else None)
        except BaseException:
            self._stop_engine(trainer)  # a failed stage leaves no vLLM engine behind in a process that goes on
            raise
        self.trained_earlier = True
        own = stage.health_report(trainer)  # a stage's own monitor replaces the attached one
        _record_health(self.summary, spec.name, health if own is None else own, p.dir, self.save_summary)
        model_dir = os.path.join(p.dir, "model")
        if not spec.model.get("lora") or self.dist.main:  # save_model is collective; a LoRA merge is main's job
            model_dir = models.save_merged(trainer, ctx.model_path, spec.model, model_dir,
                                           import_target(stage_cls.model_class))
        info = {"name": spec.name, "trainer": spec.trainer_type, "model_dir": model_dir,
                "steps": trainer.state.global_step, "seconds": round(time.time() - stage_start, 1),
                **({"rollout_log": rollouts.report()} if rollouts is not None else {}),
                **stage.result_metrics(trainer), "produces_policy": stage_cls.produces_policy,
                "policy": models.describe(trainer.model)}
        if p.ckpt:
            info["resumed_from_step"] = p.ckpt[0]
        if stopper:
            info["early_stop"] = stopper.summary()
        self._record_faults(info, ctx.rewards)
        row = None
        if self.dist.main:
            row = self._after_stage(p, info, trainer, ctx, log_cb)
            state.mark_done(p, info, row)
        self.summary["stages"].append(info)
        self.save_summary()
        self.dist.barrier()
        self.previous = model_dir if stage_cls.produces_policy else self.previous
        del trainer
        torch.cuda.empty_cache() if torch.cuda.is_available() else None

    def _stop_engine(self, trainer) -> None:
        try:
            vllm_sync.stop_engine(trainer)
        except Exception as exc:  # noqa: BLE001 - the stage's own error is the one to report
            self.log(f"could not stop the stage's vLLM engine: {type(exc).__name__}: {exc}")

    def _context(self, p):
        """The stage class and everything its trainer is built from: model, tokenizer, data, rewards, callbacks."""
        from transformers import AutoTokenizer  # noqa: PLC0415

        spec, registry = p.spec, self.registry
        stage_model = self.previous or models.resolve(spec.model["name"], registry, self.recipe)
        self.log(f"stage '{spec.name}' ({spec.trainer_type}) from {stage_model}")
        tokenizer = AutoTokenizer.from_pretrained(stage_model)
        stage_cls = registry.load("trainers", spec.trainer_type)
        rewards = [registry.build_reward(b.name, b.params, b.alias, spec.reward_faults) for b in spec.rewards]
        if self.observe_rewards:
            self.observe_rewards(spec, rewards)
        log_cb = LogHistoryCallback(os.path.join(p.dir, "log.jsonl"))
        dataset = self.data.get(spec.data, f"stages.{spec.name}.data")
        callbacks = [log_cb.callback]
        reporter = Reporter(spec.name, p.dir, spec.trainer_args.get("report_to"), self.log)
        reporter.prepare()
        stopper = _early_stop(spec, self.evaluate, tokenizer, dataset, p.dir, p.ckpt, self.log, reporter)
        if stopper:
            callbacks.append(stopper)
        ctx = StageContext(self.recipe, spec, registry, stage_model, tokenizer, dataset, p.dir, rewards, callbacks,
                           reporter)
        return stage_cls, ctx, log_cb, stopper

    def _record_faults(self, info: dict, rewards: list) -> None:
        faults = {r.__name__: r.fault_counts() for r in rewards if r.faults.policy == "skip"}
        if faults:
            info["reward_faults"] = faults  # this process's counts (the main process's share of the batch)
            for name, c in faults.items():
                self.log(f"reward '{name}': {c['skipped']} of {c['samples']} samples skipped (reward_faults: skip)")

    def _after_stage(self, p, info: dict, trainer, ctx, log_cb) -> dict | None:
        """Main process: the reward curve, and the held-out score of a stage whose result is a policy."""
        png = plot.reward_curve(log_cb.path, os.path.join(p.dir, "reward_curve.png"))
        if png:
            info["reward_curve"] = png
        if not (self.evaluate and p.spec.evaluate and info["produces_policy"]):
            return None
        result = self.evaluate(trainer.model, ctx.tokenizer, ctx.dataset)
        row = {"after": p.spec.name, **result, "key": state.eval_key(self.recipe, p.spec.data)}
        self.summary["eval"].append(row)
        self.log(f"after '{p.spec.name}': held-out score {result['score']:.1%}")
        ctx.report.log_eval(result)
        ctx.report.close()
        return row

    def finish(self) -> dict:
        self.summary["seconds"] = round(time.time() - self.start, 1)
        self.summary["complete"] = True
        if self.dist.main:
            self.save_summary()
            try:
                self.summary["plots"] = {k: v for k, v in plot.plot_run(self.out).items() if v}
                self.save_summary()
            except RewardkitError as exc:  # no matplotlib: the run itself succeeded
                self.log(f"no plots: {exc}")
            print_summary(self.summary, self.recipe, self.registry)
        self.dist.barrier()
        return self.summary


def _attach(stage_cls, trainer, ctx: StageContext):
    """What a stage's declarations ask for (rewardkit.Stage): a rollout log for a ``rollout_groups`` trainer, the
    health monitor for a ``rollout_metrics`` one (after the log, so that its alarms show the logged completions).
    Returns (rollout log, monitor), each None where not declared or switched off in the recipe."""
    from rewardkit import monitor, rollout_log  # noqa: PLC0415

    log = rollout_log.attach(trainer, ctx) if stage_cls.rollout_groups else None
    health = monitor.attach(trainer, ctx) if stage_cls.rollout_metrics else None
    return log, health


def _record_health(summary: dict, stage: str, health, out_dir: str, save_summary) -> None:
    """The health monitor's alarms into ``summary["health"]``; a stop on ``monitor.stop_on`` ends the run here,
    with the stage left resumable from the checkpoint the stop saved."""
    from rewardkit import monitor  # noqa: PLC0415

    if health is None:
        return
    summary.setdefault("health", {})[stage] = health.report()
    if health.stopped:
        save_summary()
        raise monitor.HealthStop(monitor.stop_message(stage, health, out_dir))


def _health_lines(summary: dict) -> list[str]:
    from rewardkit.monitor import format_alarm  # noqa: PLC0415

    lines = []
    for stage, rep in (summary.get("health") or {}).items():
        off = [f"{a} ({how})" for a, how in rep["checks"].items() if how != "watched"]
        lines.append(f"  stage {stage}: {len(rep['alarms'])} alarm(s)"
                     + (f" (not watched: {', '.join(off)})" if off else ""))
        lines += [f"    {format_alarm(stage, a)}" for a in rep["alarms"]]
    return ["health (training monitor):", *lines] if lines else []


def _stage_lines(st: dict, registry) -> list[str]:
    """A stage's lines in the printed summary: steps, time, resume and early stop, then its stage class's own
    ``summary_lines`` (none where its trainer is no longer registered)."""
    extra = f", reward curve {st['reward_curve']}" if st.get("reward_curve") else ""
    when = " (previous run)" if st.get("previous_run") else ""
    resumed = f" (resumed at step {st['resumed_from_step']})" if st.get("resumed_from_step") else ""
    lines = [f"  stage {st['name']}: {st['steps']} steps in {st['seconds']:.0f}s{when}{resumed}{extra}"]
    try:
        stage_cls = registry.load("trainers", st["trainer"]) if registry is not None and st.get("trainer") else None
    except RewardkitError:
        stage_cls = None
    if stage_cls is not None:
        lines += [f"    {line}" for line in stage_cls.summary_lines(st)]
    if (st.get("early_stop") or {}).get("stopped_at"):
        lines.append(f"    stopped early at step {st['early_stop']['stopped_at']}: {st['early_stop']['reason']}")
    return lines


def print_summary(summary: dict, recipe, registry=None) -> None:
    """The run's table: held-out scores after each stage, then each stage's lines, health alarms and paths.
    ``registry`` finds each stage's class for its own ``summary_lines``."""
    from rewardkit.evaluate import k_cell, k_columns, k_notes  # noqa: PLC0415

    lines = ["", f"rewardkit: finished in {summary['seconds']:.0f}s"]
    if summary["eval"]:
        n = summary["eval"][0]["n"]
        sampled = "sampled_score" in summary["eval"][0]
        ks = k_columns(summary["eval"])  # pass@k, maj@k: beside sampled accuracy, from the same samples
        head = f"held-out score ({recipe.eval.split}, {n} examples):  greedy"
        if sampled:
            row0 = summary["eval"][0]
            head += f"       sampled ({row0['samples']} per prompt, temperature {row0['temperature']})"
        lines.append(head)
        if ks:
            lines.append(" " * 48 + "".join(f"{h:>13}" for h, *_ in ks))
        prev = None
        for row in summary["eval"]:
            line = f"  {row['after']:<12} {row['score']:6.1%}"
            line += f" ({(row['score'] - prev['score']) * 100:+5.1f})" if prev else " " * 8
            if sampled and "sampled_score" in row:
                line += f"    {row['sampled_score']:6.1%}"
                line += f" ({(row['sampled_score'] - prev['sampled_score']) * 100:+5.1f})" if prev else " " * 8
            if ks:
                line = f"{line:<48}" + "".join(f"{k_cell(row, c):>13}" for c in ks)
            lines.append(line)
            prev = row
        lines += k_notes(summary["eval"])
    for st in summary["stages"]:
        lines += _stage_lines(st, registry)
    lines += _health_lines(summary)
    if summary["stages"]:
        lines.append(f"model written to {summary['stages'][-1]['model_dir']}")
    if summary.get("plots"):
        lines.append(f"plots: {os.path.dirname(next(iter(summary['plots'].values())))}")
    lines.append(f"summary: {os.path.join(summary['output_dir'], 'summary.json')}")
    print("\n".join(lines), flush=True)
