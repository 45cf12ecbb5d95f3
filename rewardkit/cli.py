"""The ``rewardkit`` command: run, validate, probe, plugins, plot, new-plugin.

User errors (bad recipe, missing plugin, broken reward) print one clear message and exit with code 2;
only bugs show a traceback. ``plugins`` imports no torch.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from rewardkit.errors import RewardkitError

EXIT_USER_ERROR = 2


def cmd_validate(args) -> int:
    from rewardkit.recipe import load_recipe  # noqa: PLC0415

    recipe = load_recipe(args.recipe, args.overrides, build_undeclared=True)  # data too, not only declarations
    stages = ", ".join(f"{s.name} ({s.trainer_type})" for s in recipe.stages)
    print(f"{args.recipe}: OK — stages: {stages}; output_dir: {recipe.output_dir}")
    return 0


def cmd_run(args) -> int:
    from rewardkit.recipe import load_recipe  # noqa: PLC0415
    from rewardkit.registry import get_registry  # noqa: PLC0415

    recipe = load_recipe(args.recipe, args.overrides)  # validation happens before any model loads
    if args.smoke:
        from rewardkit.smoke import run_smoke  # noqa: PLC0415

        return run_smoke(recipe, get_registry())
    from rewardkit.pipeline import run  # noqa: PLC0415

    run(recipe, get_registry(), resume="require" if args.resume else "never" if args.fresh else "auto")
    return 0


def cmd_probe(args) -> int:
    """Exit 0: no exploit found; 1: some reward has an exploit; 2: recipe errors (raised, as everywhere)."""
    from rewardkit import probe  # noqa: PLC0415
    from rewardkit.recipe import load_recipe  # noqa: PLC0415
    from rewardkit.registry import get_registry  # noqa: PLC0415

    if args.rows < 1:
        raise RewardkitError(f"--rows: at least 1 dataset row is needed, got {args.rows}")
    recipe = load_recipe(args.recipe, args.overrides)
    reports = probe.probe_recipe(recipe, get_registry(), rows=args.rows)
    print(probe.as_json(reports) if args.json else probe.format_reports(reports))
    for rep in reports if args.json else []:  # the JSON list has probe results only: say what was left out
        if rep.skipped:
            print(f"rewardkit probe: stage {rep.stage}, reward {rep.reward} skipped: {rep.skipped}", file=sys.stderr)
    exploits = [r for rep in reports for r in rep.exploits]
    if not args.json:
        rewards = len({(rep.stage, rep.reward) for rep in reports if rep.exploits})
        print(f"{len(exploits)} exploit(s) in {rewards} reward(s)" if exploits else "no exploit found")
    return 1 if exploits else 0


def _writable(path: str, option: str) -> None:
    from rewardkit.run_state import dir_problem  # noqa: PLC0415

    bad = dir_problem(path)
    if bad:
        raise RewardkitError(f"{option}: {bad}")


def cmd_plot(args) -> int:
    from rewardkit.plot import plot_run, why_missing  # noqa: PLC0415

    if args.out:
        _writable(args.out, "--out")
    written = plot_run(args.run_dir, args.out)
    for metric, path in written.items():
        print(f"{metric:<9} {path}" if path else f"{metric:<9} - ({why_missing(metric)})")
    return 0


def cmd_new_plugin(args) -> int:
    from rewardkit.scaffold import new_plugin  # noqa: PLC0415

    _writable(args.dir, "--dir")
    path, files = new_plugin(args.name, args.dir)
    print(f"wrote {path}:")
    for f in files:
        print(f"  {f}")
    print(f"next: pip install -e {path} && rewardkit plugins && python -m pytest {path}")
    return 0


def cmd_plugins(args) -> int:
    from rewardkit.registry import DISABLE_ENV, get_registry  # noqa: PLC0415

    registry = get_registry()
    plugins = registry.plugins()
    conflicts = registry.conflicts()
    if args.json:
        print(json.dumps({"plugins": [p.as_dict() for p in plugins], "conflicts": conflicts}, indent=2))
        return 0
    by_dist: dict[tuple[str, str], list] = {}
    for p in plugins:
        by_dist.setdefault((p.dist, p.version), []).append(p)
    for (dist, version), eps in by_dist.items():
        print(f"{dist} {version}")
        for p in eps:
            status = f" [disabled by {DISABLE_ENV}]" if p.disabled else ""
            print(f"  {p.name} ({p.group} = {p.value}){status}")
            for error in p.errors:
                print(f"    ERROR: {error}")
            for kind, names in sorted(p.registered.items()):
                print(f"    {kind}: {', '.join(names)}")
    for c in conflicts:
        print(f"CONFLICT: {c}")
    return 0


def cmd_show(args) -> int:
    from rewardkit.replay import show  # noqa: PLC0415

    order = "worst" if args.worst else "best" if args.best else None
    print(show(args.run_dir, args.stage, args.step, order, args.groups))
    return 0


def cmd_replay(args) -> int:
    from rewardkit.recipe_file import apply_overrides  # noqa: PLC0415
    from rewardkit.registry import get_registry  # noqa: PLC0415
    from rewardkit.replay import format_report, replay  # noqa: PLC0415

    bad = [p for p in args.param if "=" not in p or p.startswith(("=", "~"))]
    if bad:
        raise RewardkitError(f"--param {bad[0]!r}: expected key=value")
    params = apply_overrides({}, args.param, source="--param")
    rep = replay(args.run_dir, get_registry(), args.reward, params, args.stage, args.alias)
    print(json.dumps(rep, indent=2) if args.json else format_report(rep))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rewardkit", description="RL fine-tuning of language models on TRL.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, fn, help_ in (("run", cmd_run, "validate, then train every stage of a recipe"),
                            ("validate", cmd_validate, "check a recipe without loading any model")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("recipe", help="recipe YAML file")
        p.add_argument("overrides", nargs="*", help="key.path=value (YAML value) or ~key.path to delete")
        if name == "run":
            g = p.add_mutually_exclusive_group()
            g.add_argument("--resume", action="store_true",
                           help="continue the run in output_dir (an error if there is nothing to continue); "
                                "without a flag, a run continues automatically when output_dir holds one")
            g.add_argument("--fresh", action="store_true",
                           help="delete this recipe's previous stage outputs in output_dir and start over")
            g.add_argument("--smoke", action="store_true",
                           help="run the recipe's code path at CPU sizes (tiny stand-in of a hub model, bundled "
                                "data, 2 steps) into OUTPUT_DIR-smoke, and report what the rewards scored; exit 1 "
                                "when a reward pipeline gives no signal (docs/operations.md)")
        p.set_defaults(fn=fn)
    p = sub.add_parser("probe", help="score adversarial completions with every reward of a recipe's RL stages")
    p.add_argument("recipe", help="recipe YAML file")
    p.add_argument("overrides", nargs="*", help="key.path=value (YAML value) or ~key.path to delete")
    p.add_argument("--json", action="store_true", help="print a list of {stage, reward, probe, score, "
                                                       "gold_score, exploit}")
    p.add_argument("--rows", type=int, default=32, help="training rows probed per stage (default 32)")
    p.set_defaults(fn=cmd_probe)
    p = sub.add_parser("plot", help="write PNGs of reward, KL, accuracy and loss curves of a run")
    p.add_argument("run_dir", help="a run's output_dir (holds <stage>/log.jsonl and summary.json)")
    p.add_argument("--out", help="where to write the PNGs (default RUN_DIR/plots)")
    p.set_defaults(fn=cmd_plot)
    p = sub.add_parser("show", help="print what an RL stage generated and how each reward scored it (its rollout log)")
    p.add_argument("run_dir", help="a run's output_dir")
    p.add_argument("--stage", help="the stage (default: the last one that wrote rollouts.jsonl)")
    p.add_argument("--step", type=int, help="only the rollout generated at this optimizer step")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--worst", action="store_true", help="the groups with the lowest mean reward first")
    g.add_argument("--best", action="store_true", help="the groups with the highest mean reward first")
    p.add_argument("--groups", type=int, default=3, help="groups to print (default 3)")
    p.set_defaults(fn=cmd_show)
    p = sub.add_parser("replay", help="re-score a run's logged completions with a reward and report what would "
                                      "change (scores, group rankings, advantage signs)")
    p.add_argument("run_dir", help="a run's output_dir")
    p.add_argument("--reward", required=True, help="a registered reward name")
    p.add_argument("--param", action="append", default=[], help="key=value (YAML value) for the reward's factory")
    p.add_argument("--alias", help="the logged component it replaces (default: --reward's name)")
    p.add_argument("--stage", help="the stage (default: the last one that wrote rollouts.jsonl)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(fn=cmd_replay)
    p = sub.add_parser("new-plugin", help="write a ready rewardkit-NAME plugin package")
    p.add_argument("name", help="plugin name: lowercase letters, digits, '-' (e.g. 'brevity')")
    p.add_argument("--dir", default=".", help="directory to create rewardkit-NAME in (default: here)")
    p.set_defaults(fn=cmd_new_plugin)
    p = sub.add_parser("plugins", help="list plugin distributions and what they registered")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(fn=cmd_plugins)
    return parser


# bitsandbytes (which transformers imports through peft) logs this on every start on a CPU with AVX512-BF16 when
# the optional `kernels` package is missing. That kernel only speeds up 4-bit matmuls on CPU; training runs the
# same without it, and nothing a user of rewardkit must do follows. Only this record is dropped.
_BNB_KERNELS = ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward from kernels-community")


def _not_bnb_kernels_notice(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(_BNB_KERNELS[1])


def _quiet_third_party() -> None:
    logging.getLogger(_BNB_KERNELS[0]).addFilter(_not_bnb_kernels_notice)  # once: the same filter is not re-added


def main(argv: list[str] | None = None) -> int:
    _quiet_third_party()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command in ("run", "validate", "probe"):  # options and overrides in any order
        if any(e.startswith("-") and not e.startswith("~") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.fn(args)
    except RewardkitError as exc:
        print(f"rewardkit: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("rewardkit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
