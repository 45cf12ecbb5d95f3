"""rewardkit hooks of rewardkit-toyenv (cheap to import: the environment is named by "module:attribute")."""

import rewardkit


@rewardkit.hookimpl
def register_environments(register):
    register("toy.lookup", "rewardkit_toyenv.env:LookupEnvironment",
             description="a key-value store read with lookup(key); the row's 'table' column fills it")
