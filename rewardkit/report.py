"""``report_to``: live curves in TensorBoard, trackio (or any logging integration transformers has), from a recipe.

A stage's ``trainer:`` section takes TRL's ``report_to`` (``tensorboard``, ``trackio``, a list, ``all``; rewardkit's
default is ``none``). TRL's trainers send every logged record to those integrations (loss, reward,
``rewards/<alias>/mean``, kl, ...). What rewardkit measures outside TRL's logger goes to the same integrations,
through their ``on_log`` at the trainer's global step, so every backend a recipe names receives it:

================================== ===============================================================================
``rewardkit/heldout_score``        the health monitor's held-out score while training (``monitor.eval_every``)
``rewardkit/early_stop_score``     ``early_stop``'s score on its split, at every check
``rewardkit/alarm/<alarm>``        1 at the step a health monitor alarm fired (``length_drift``, ...)
``rewardkit/eval/<metric>``        the held-out evaluation after the stage (``score``, ``sampled_score``, pass@k..)
================================== ===============================================================================

transformers files them under ``train/`` as it does TRL's metrics (``train/rewardkit/heldout_score``).

Where the files go, so that ``--fresh`` clears them with the stage and a resumed stage continues them:
TensorBoard writes ``<output_dir>/<stage>/tensorboard/`` (``TENSORBOARD_LOGGING_DIR`` overrides it), trackio its
local store ``<output_dir>/<stage>/trackio/`` (``TRACKIO_DIR`` overrides it), as project the output folder's name and
as run the stage's (``project``, ``run_name`` override them). Nothing goes to a hub unless the recipe sets
``trackio_space_id``. trackio fixes its directory when it is imported, which TRL does as soon as its GRPO trainer
is (before any recipe is read); ``point_trackio`` moves it to the stage's folder.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import sys

# Trainer fields that decide where and how training is reported, not what it trains: a stage that only changes
# them is reused, and an interrupted one resumes (rewardkit.run_state leaves them out of the fingerprint).
REPORT_KEYS = ("report_to", "project", "run_name", "trackio_space_id", "trackio_bucket_id", "trackio_static_space_id")
# The backends .ci/setup installs (pip install 'rewardkit[track]'); another integration names its own package.
EXTRA = {"tensorboard": "tensorboard", "trackio": "trackio"}
PACKAGE = {"azure_ml": "azureml-core", "comet_ml": "comet_ml", "flyte": "flytekit", "kubeflow": "kubeflow"}
SPECIAL = ("none", "all")
AFTER_STAGE_SKIP = ("n", "unjudged", "sampled_unjudged", "samples", "temperature")


def names(value) -> list[str]:
    """The integrations ``report_to`` names (``all``: every one installed; ``none``/None: none)."""
    listed = [value] if isinstance(value, str) else list(value or [])
    if "all" in listed:
        from transformers.integrations import get_available_reporting_integrations  # noqa: PLC0415

        return get_available_reporting_integrations()
    return [n for n in listed if n != "none"]


def problems(value) -> list[str]:
    """``report_to`` checked before any model loads: each name an integration transformers has, its package
    installed (transformers would otherwise fail once the model has loaded)."""
    if value is None:
        return []
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK  # noqa: PLC0415

    listed = [value] if isinstance(value, str) else list(value)
    known = sorted(INTEGRATION_TO_CALLBACK)
    out = []
    for name in listed:
        if name in SPECIAL:
            continue
        if name not in INTEGRATION_TO_CALLBACK:
            close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'?" if close else f"known: none, all, {', '.join(known)}"
            out.append(f"report_to: unknown logging integration {name!r} ({hint})")
        elif not _installed(name):
            pkg = EXTRA.get(name) or PACKAGE.get(name, name)
            extra = " (or pip install 'rewardkit[track]' for tensorboard and trackio)" if name in EXTRA else ""
            out.append(f"report_to: {name!r} needs the {pkg} package, which is not installed: pip install {pkg}"
                       f"{extra}")
    return out


def _installed(name: str) -> bool:
    if name == "tensorboard":  # transformers' TensorBoardCallback writes through torch.utils.tensorboard
        return importlib.util.find_spec("tensorboard") is not None
    if name == "trackio":
        return importlib.util.find_spec("trackio") is not None
    from transformers.integrations import get_available_reporting_integrations  # noqa: PLC0415

    return name in get_available_reporting_integrations()


def config_defaults(args: dict, stage: str, run_dir: str) -> dict:
    """Trainer fields rewardkit fills when a stage reports somewhere: trackio's project (the output folder's name)
    and run name (the stage's)."""
    if not names(args.get("report_to", "none")):
        return {}
    return {"project": os.path.basename(os.path.abspath(run_dir)) or "rewardkit", "run_name": stage}


def point_trackio(path: str) -> None:
    """Make trackio keep its local store in ``path``. trackio computes ``TRACKIO_DIR`` (and ``MEDIA_DIR``,
    ``ARTIFACTS_DIR`` under it) once, on import, and its modules copy them (``from trackio.utils import
    TRACKIO_DIR``); every copy that still holds the current value is replaced. Checked against the pinned trackio by
    tests/test_report_to.py, which reads the store back from the stage's folder."""
    from pathlib import Path  # noqa: PLC0415

    import trackio.utils  # noqa: PLC0415

    root = Path(path)
    new = {"TRACKIO_DIR": root, "MEDIA_DIR": root / "media", "ARTIFACTS_DIR": root / "artifacts"}
    old = {name: getattr(trackio.utils, name) for name in new}
    for mod_name, mod in list(sys.modules.items()):
        if mod is not None and (mod_name == "trackio" or mod_name.startswith("trackio.")):
            for name, value in new.items():
                if getattr(mod, name, None) == old[name]:
                    setattr(mod, name, value)


class Reporter:
    """One stage's link to its trainer's logging integrations. Before the trainer is built, ``prepare`` points
    trackio at the run's store; ``bind(trainer)`` finds the integration callbacks and gives TensorBoard the stage's
    folder; ``log(metrics)`` sends rewardkit's metrics to them at the current step; ``close()`` flushes what was
    logged after training ended (the stage's held-out evaluation)."""

    def __init__(self, stage: str, stage_dir: str, report_to, log=print):
        self.stage, self.stage_dir = stage, stage_dir
        self.backends = names(report_to)
        self.say = log
        self.trainer = None
        self.callbacks: list = []

    def prepare(self) -> None:
        if "trackio" in self.backends and not os.environ.get("TRACKIO_DIR"):
            point_trackio(os.path.join(self.stage_dir, "trackio"))

    def bind(self, trainer) -> None:
        if not self.backends:
            return
        from transformers.integrations import get_reporting_integration_callbacks  # noqa: PLC0415
        from transformers.integrations.integration_utils import TensorBoardCallback  # noqa: PLC0415

        kinds = tuple(get_reporting_integration_callbacks(trainer.args.report_to))
        self.trainer = trainer
        self.callbacks = [cb for cb in trainer.callback_handler.callbacks if isinstance(cb, kinds)]
        where = []
        for cb in self.callbacks:
            if isinstance(cb, TensorBoardCallback):
                cb.logging_dir = cb.logging_dir or os.path.join(self.stage_dir, "tensorboard")
                where.append(f"tensorboard {cb.logging_dir}")
        if "trackio" in self.backends:
            import trackio.utils  # noqa: PLC0415

            where.append(f"trackio {trackio.utils.TRACKIO_DIR} (project '{trainer.args.project}', run "
                         f"'{trainer.args.run_name}'; view: TRACKIO_DIR={trackio.utils.TRACKIO_DIR} trackio show)")
        if where and trainer.args.process_index == 0:
            self.say(f"stage '{self.stage}' reports to " + ", ".join(where))

    def __call__(self, metrics: dict) -> None:
        self.log(metrics)

    def log(self, metrics: dict) -> None:
        """``metrics`` to every integration the trainer reports to, at its global step (each integration writes
        on the main process only)."""
        t = self.trainer
        for cb in self.callbacks:
            cb.on_log(t.args, t.state, t.control, model=t.model, logs=dict(metrics))

    def log_eval(self, result: dict) -> None:
        """The stage's held-out evaluation (``rewardkit.evaluate``'s result) as ``rewardkit/eval/<metric>``."""
        metrics = {}
        for key, v in result.items():
            if isinstance(v, dict) and isinstance(v.get("value"), (int, float)):
                v = v["value"]
            if isinstance(v, (int, float)) and not isinstance(v, bool) and key not in AFTER_STAGE_SKIP \
                    and v == v:  # NaN: nothing was judged
                metrics[f"rewardkit/eval/{key}"] = float(v)
        if metrics:
            self.log(metrics)

    def close(self) -> None:
        """After ``log`` past the end of training: TensorBoard's writer closed (flushed) and trackio's run finished
        again (their ``on_log`` reopened them); other integrations are left as their ``on_train_end`` left them."""
        from transformers.integrations.integration_utils import TensorBoardCallback, TrackioCallback  # noqa: PLC0415

        t = self.trainer
        for cb in self.callbacks:
            if isinstance(cb, (TensorBoardCallback, TrackioCallback)):
                cb.on_train_end(t.args, t.state, t.control, model=t.model)
