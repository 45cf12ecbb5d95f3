"""Every hook a rewardkit plugin can implement, and the contract of each.

A plugin is a module (or any object) holding functions marked with ``@rewardkit.hookimpl`` and named after
the hooks below. It is found through the ``rewardkit`` entry-point group of its distribution::

    [project.entry-points.rewardkit]
    myplugin = "my_package.rewardkit_plugin"

Each hook receives a ``register`` callable and calls it once per component. The host (rewardkit) owns the
collection: it records which distribution registered which name, rejects a name registered twice (naming
both distributions), and resolves components only when a recipe asks for them. A hook module should be cheap
to import: pass heavy objects as ``"module:attribute"`` strings, which rewardkit imports only on use.

Hooks are called once per :class:`rewardkit.registry.Registry` (lazily, the first time it is asked for
anything): a process that builds several registries (tests, ``rewardkit.testing``'s fixtures) runs them once for
each. Every hook returns ``None``; what counts is what it passed to ``register``. A hook that raises is
recorded against its plugin (``rewardkit plugins`` shows every such error) and the plugin's other hooks and every
other plugin still run; a plugin with a hook no spec here names (a misspelt name) is refused whole.

A reward can also be declared without any hook: an entry point in the ``rewardkit.rewards`` group names a
reward directly (entry-point name = reward name). See :func:`register_rewards` for what it may point to.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("rewardkit")


@hookspec
def register_rewards(register) -> None:
    """Register reward functions or reward factories.

    Called once, when the registry loads plugins.

    ``register(name, obj, *, columns=None, description=None)``

    - ``name`` (str): the name recipes use, e.g. ``"math.accuracy"``, unique across plugins (prefix it by plugin).
    - ``obj``: one of

      * a **reward function**: a plain TRL reward function
        ``fn(prompts, completions, **kwargs) -> list[float | None]``. ``kwargs`` holds every dataset column
        of the batch (one list per column, aligned with ``completions``) plus TRL's extras
        (``completion_ids``, ``trainer_state``, ...); the function must accept and ignore what it does not
        use. It returns one float per completion, or ``None`` where it *could not judge* (TRL then leaves
        the sample out of that reward). ``None`` is never a synonym for a wrong answer; 0.0 is.
      * a **reward factory**: any other callable (typically a class). The recipe's ``params`` are bound to
        its signature at validation time (a misspelt param is a recipe error), and calling it must return
        a reward function. Factories must be cheap: open pools, sandboxes or models lazily, on first call.
      * a ``"module:attribute"`` string naming either of the above, imported only when a recipe uses it.

      rewardkit tells the two apart by signature: a non-class callable with a parameter named ``completions`` is
      a reward function; anything else is a factory.
    - ``columns``: dataset columns the reward needs (validated against the recipe's dataset before any model
      loads). A list of names, or a callable ``columns(params: dict) -> list[str]`` (or its ``"module:attribute"``
      string) for factories whose column is itself a param (``gold_column="answer"``). When omitted, rewardkit
      infers them from a reward function's required keyword parameters.
    - ``description`` (str): one line shown by ``rewardkit plugins``.

    **Probes a reward declares itself** (optional attributes of the reward function, i.e. of what a factory
    returns; read by ``rewardkit probe``, see :data:`REWARD_PROBE_ATTRIBUTES`):

    - ``probe_gold(row: dict) -> str | None``: a completion that deserves full marks on dataset row ``row``
      (one dict of column values), in the format the reward expects. Without it ``rewardkit probe`` tries
      the gold column bare, as ``#### x``, ``\\boxed{x}``, "The answer is x.", in answer tags and from a
      ``solution``/``completion``/``chosen`` column, and keeps the format the reward scores highest.
    - ``probe_completions(rows: list[dict]) -> dict[str, list[str | None]]``: extra adversarial completions,
      probe name -> one completion text per row (``None`` where a probe does not apply to a row), e.g. the
      code plugin's programs that exit 0 early, print success markers, raise, or return objects that compare
      equal to anything. Each is scored like the built-in probes: an exploit when it earns what the gold
      earns (below) and more than a wrong answer's.

    **What a reward judges** (optional attribute ``judges_only`` of the reward function, or of the factory that
    builds it: a class attribute serves both; read by ``rewardkit probe``, see :data:`REWARD_JUDGES_ONLY`):

    - absent or ``None``: the reward judges correctness. ``rewardkit probe`` then reports it when a wrong answer
      in the gold's format earns what the gold earns (at least half the gold control's mean; as much as the
      gold's where that is 0 or a penalty), and when the gold completions do not score lower once the columns
      the reward declares (``columns``) are taken from other rows.
    - ``"format"``: it judges only the completion's form (``math.format``); a wrong answer may score as the gold
      does. Instead, a completion without content (empty, blank, the gold's format with the answer cut out,
      empty tags, an empty ``\\boxed{}`` or code fence) must not earn what the gold earns.
    - ``"length"``: it judges only length (``math.length_penalty``). Instead, a 1 MB completion must not earn what
      the gold earns.

    Any other value is an error. Whatever it judges, a reward's score of a completion depends on that completion
    and its row only: ``rewardkit probe`` reports a score that changes when the batch is split, reordered, scored
    again or scored in another process.

    **The range of its scores** (optional attribute ``score_range = (low, high)`` of the reward function or its
    factory; ``exact_match`` and ``math.accuracy``: ``(0.0, 1.0)``): every score lies in it. ``validate`` refuses an
    ``early_stop.target`` above ``high`` and an ``eval.correct_at`` outside ``(low, high]``; held-out pass@k and
    maj@k count a sampled completion correct when it scores ``high`` (unless ``eval.correct_at`` says otherwise),
    and without a declared range and ``eval.correct_at`` they are reported as not available.

    **The answer a completion gives** (optional attribute ``extract_answer`` of the reward function, i.e. of what a
    factory returns: a method of the factory class serves; read by held-out evaluation, see
    :data:`REWARD_ANSWER_EXTRACTOR`):

    - ``extract_answer(completion: str) -> str | None``: the final answer in the completion's text, as a canonical
      string (two ways of writing one answer give one string: the math plugin writes ``18.0`` and ``18`` as
      ``18``), or ``None`` where the completion gives none. The contract with the reward's score: on one row,
      completions whose extracted answers are equal earn equal scores (the answer decides the verdict). It must not
      raise on any text; a raise is reported as a fault of the reward, never taken as "no answer".
    - Held-out maj@k (``eval.maj_k``, docs/recipes.md) votes over the extracted answers of k sampled completions:
      the most frequent answer wins, ties go to the answer sampled first, completions without an answer do not
      vote, and the winner is judged by the score the reward gave the completions that gave it. Without
      ``extract_answer`` maj@k is reported as not available (``null`` with the reason in ``summary.json``), never
      as 0. ``exact_match`` (its first line, stripped) and ``math.accuracy`` (its extraction modes) define it.
    """


REWARD_PROBE_ATTRIBUTES = ("probe_gold", "probe_completions")  # documented in register_rewards above
REWARD_JUDGES_ONLY = "judges_only"  # documented in register_rewards above, with its values:
JUDGES_ONLY_VALUES = ("format", "length")
REWARD_ANSWER_EXTRACTOR = "extract_answer"  # documented in register_rewards above


@hookspec
def register_kl_estimators(register) -> None:
    """Register per-token KL estimators.

    Called once, when the registry loads plugins.

    ``register(name, fn, *, description=None)`` where ``fn(logp, ref_logp) -> kl`` takes two tensors of the
    same shape, ``(B, T)``: log-probabilities of the *sampled* tokens under the policy being trained and
    under the reference, and returns the per-token KL estimate, same shape, differentiable with respect to
    ``logp``. ``fn`` may be a ``"module:attribute"`` string. The built-ins are rewardkit's
    :data:`rewardkit.algorithms.kl.ESTIMATORS` (``rewardkit plugins`` lists them). A trainer uses it with
    ``kl_placement: loss`` (differentiated, times the token ratio); in the reward only ``k1`` is accepted, since a
    detached penalty regularises only when E[∇k] = 0 (the module's docstring has the measurements).
    """


@hookspec
def register_trainers(register) -> None:
    """Register trainers, the things a recipe stage names with ``trainer.type``.

    Called once, when the registry loads plugins.

    ``register(name, obj, *, description=None)`` where ``obj`` (usually a ``"module:Class"`` string, so that
    listing plugins never imports torch) is a subclass of :class:`rewardkit.Stage`, or of :class:`rewardkit.TRLStage`
    for a TRL trainer built with the recipe's model section (``from rewardkit import Stage, StageContext``; the
    full contract is the docstring of :mod:`rewardkit.trainers.base` and docs/architecture.md's
    "Trainer contract"). The class declares ``config_class`` (the config dataclass its ``trainer`` section is
    checked against, field by field, by ``check_args``), ``column_layouts`` (the dataset columns it consumes),
    ``takes_rewards``, ``produces_policy`` (false for a reward model), ``model_class`` (how its result is reloaded),
    ``defaults``, and ``rollout_metrics`` / ``rollout_groups`` (its trainer logs TRL's GRPO metric names / writes its
    generated groups to ``trainer.rollout_log``: rewardkit then attaches the health monitor / the rollout log). It
    implements ``build_trainer(ctx)``, returning a ``transformers.Trainer`` built from the
    :class:`rewardkit.StageContext` and given ``ctx.callbacks``. Optional hooks: ``check_args(args, registry)``
    and ``check_stage(spec, columns, registry)`` (its own validation rules, before any model loads: ``check_args``
    returns problems located within the trainer section, e.g. ``"beta: must be >= 0"``, to which ``check_stage``
    adds the ``trainer.`` prefix; ``check_stage`` returns them located from the stage, e.g. ``"trainer.beta: ..."``
    or ``"data: ..."``), ``result_metrics(trainer)`` (into
    ``summary.json``), ``health_report(trainer)`` (a monitor of its own) and ``summary_lines(info)`` (lines of the
    printed summary).
    """


@hookspec
def register_datasets(register) -> None:
    """Register named datasets a recipe can use as ``data: {name: ..., params: {...}}``.

    Called once, when the registry loads plugins.

    ``register(name, loader, *, columns=None, description=None)`` where ``loader(**params)`` returns a
    ``datasets.DatasetDict`` with a ``"train"`` split and, for held-out evaluation, a ``"test"`` split.
    ``columns`` lists the columns it produces (used by validation to check rewards' columns without
    building the data); ``loader`` may be a ``"module:attribute"`` string. Loaders must be deterministic
    given their params (seed included). A loader may carry ``loader.splits(**params) -> list[str]``: the splits
    it returns for those params, read by validation without building the data (raising ``ValueError`` there
    refuses params the loader would refuse); without it ``rewardkit validate`` builds the data to learn them.
    """


@hookspec
def register_models(register) -> None:
    """Register named models a recipe can use as ``model: {name: ...}`` without any hub access.

    Called once, when the registry loads plugins.

    ``register(name, builder, *, description=None)`` where ``builder(path)`` writes a model and tokenizer
    loadable with ``from_pretrained(path)`` into the empty directory ``path``. rewardkit calls it once and
    caches the result (``$REWARDKIT_CACHE``, default ``~/.cache/rewardkit``); builders must be deterministic.
    ``builder`` may be a ``"module:attribute"`` string.
    """


@hookspec
def register_environments(register) -> None:
    """Register environments for multi-turn tool-use RL: a recipe names one with ``environment: {name, params}``.

    Called once, when the registry loads plugins.

    ``register(name, factory, *, description=None)`` where ``factory`` is a class or any callable (or its
    ``"module:attribute"`` string, imported only when a recipe uses it) that builds one environment:
    ``factory(**params)``, the recipe's ``environment.params`` bound to its signature and checked against its
    annotations at validation time (a misspelt or mistyped param is a recipe error, as for a reward factory;
    :meth:`rewardkit.registry.Registry.environment_problems`). rewardkit hands TRL's
    ``GRPOTrainer(environment_factory=...)`` (TRL 1.16) a zero-argument callable that calls it
    (:meth:`~rewardkit.registry.Registry.build_environment`); TRL builds one instance per concurrent rollout and
    reuses instances across batches, resetting them. Derive the class from :class:`rewardkit.Environment`
    (``from rewardkit import Environment, EnvironmentFault``; docs/environments.md): any class with the methods
    below works with TRL, but only a subclass gets rewardkit's guarantees: a tool raises
    :class:`rewardkit.EnvironmentFault` for the environment's own failure (its sandbox or worker died), which is
    kept from the model, ends the episode and makes every reward of the stage raise for that rollout, so the
    recipe's ``reward_faults`` policy decides; any other exception a tool raises is the model's fault and is shown
    to it as the tool's result. What ``factory(**params)`` returns must provide:

    - ``reset(**row) -> str | None``: a method defined on its class, called before every rollout with the dataset
      row's columns as keyword arguments (accept ``**kwargs``: ``prompt`` and every other column come). It
      starts a new episode; a returned string is appended to the prompt's last user message.
    - tools: every other public method (a name not starting with ``_``, other than ``reset`` and
      ``get_reward``) is offered to the model as a tool and called with the arguments the model gives. Each needs
      type hints on every argument and on its return value and a Google-style docstring with an ``Args:``
      section: transformers builds the tool's JSON schema from them. What it returns is what the model reads.
    - optionally ``get_reward() -> float`` (sync or async): the finished rollout's reward, read from the
      environment's state once per rollout; TRL adds it as one more reward function, weight 1, named after the
      class. Without it the recipe's rewards score the rollout.

    Calling ``factory`` must be cheap and its instances independent of each other: open sandboxes, processes or
    connections lazily (in ``reset``), not in the constructor.
    """
