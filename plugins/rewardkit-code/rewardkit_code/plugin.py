"""rewardkit hooks of the code plugin. Cheap to import: everything is named by "module:attribute"."""

import rewardkit


@rewardkit.hookimpl
def register_rewards(register):
    register("code.tests", "rewardkit_code.reward:CodeTests",
             columns="rewardkit_code.reward:tests_columns",
             description="run the completion's Python in a local sandbox (bwrap+cgroups) against the "
                         "example's stdin/stdout or function-call tests; fraction passed or all-or-nothing")


@rewardkit.hookimpl
def register_datasets(register):
    register("code.problems", "rewardkit_code.problems:load_problems",
             columns=["id", "style", "question", "tests"],
             description="26 small bundled Python problems (stdin/stdout and function-call tests)")


@rewardkit.hookimpl
def register_environments(register):
    register("python", "rewardkit_code.environment:PythonEnvironment",
             description="one tool, python(code): runs the model's program in the local sandbox (no network, "
                         "bounded time/memory/output) and returns what it printed")
