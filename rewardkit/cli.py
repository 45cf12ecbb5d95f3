"""The ``rewardkit`` command: run, validate, plugins.

User errors (bad recipe, missing plugin, broken reward) print one clear message and exit with code 2;
only bugs show a traceback. ``plugins`` imports no torch.
"""

from __future__ import annotations

import argparse
import json
import sys

from rewardkit.errors import RewardkitError

EXIT_USER_ERROR = 2


def cmd_validate(args) -> int:
    from rewardkit.recipe import load_recipe  # noqa: PLC0415

    recipe = load_recipe(args.recipe, args.overrides)
    stages = ", ".join(f"{s.name} ({s.trainer_type})" for s in recipe.stages)
    print(f"{args.recipe}: OK — stages: {stages}; output_dir: {recipe.output_dir}")
    return 0


def cmd_run(args) -> int:
    from rewardkit.recipe import load_recipe  # noqa: PLC0415
    from rewardkit.registry import get_registry  # noqa: PLC0415

    recipe = load_recipe(args.recipe, args.overrides)  # validation happens before any model loads
    from rewardkit.pipeline import run  # noqa: PLC0415

    run(recipe, get_registry())
    return 0


def cmd_plugins(args) -> int:
    from rewardkit.registry import get_registry  # noqa: PLC0415

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
            status = " [disabled]" if p.disabled else ""
            print(f"  {p.name} ({p.group} = {p.value}){status}")
            if p.error:
                print(f"    ERROR: {p.error}")
            for kind, names in sorted(p.registered.items()):
                print(f"    {kind}: {', '.join(names)}")
    for c in conflicts:
        print(f"CONFLICT: {c}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rewardkit", description="RL fine-tuning of language models on TRL.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, fn, help_ in (("run", cmd_run, "validate, then train every stage of a recipe"),
                            ("validate", cmd_validate, "check a recipe without loading any model")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("recipe", help="recipe YAML file")
        p.add_argument("overrides", nargs="*", help="key.path=value (YAML value) or ~key.path to delete")
        p.set_defaults(fn=fn)
    p = sub.add_parser("plugins", help="list plugin distributions and what they registered")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(fn=cmd_plugins)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
