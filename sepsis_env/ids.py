"""Which environment is this: the Gymnasium ids of this package's environments, their short
names on the command line, and the tests every other package asks ("is it SepsisEnv?").

Kept free of module-level imports so that any layer can ask without loading an environment
(`check_env_id` imports Gymnasium and the env's module when it is called).
"""

from __future__ import annotations

SEPSIS_ENV_ID = "SepsisEnv-v0"
"""Gymnasium id of `sepsis_env.env.SepsisEnv` (registered by `import sepsis_env`)."""
SEPSIS_GYM_ID = f"sepsis_env:{SEPSIS_ENV_ID}"
"""The same id in Gymnasium's `module:EnvId` form (imports `sepsis_env` first in any process)."""
ICU_SEPSIS_ENV_ID = "ICUSepsis-v0"
"""Gymnasium id of `sepsis_env.icu_sepsis.ICUSepsisBenchmarkEnv`."""
ICU_SEPSIS_GYM_ID = f"sepsis_env.icu_sepsis:{ICU_SEPSIS_ENV_ID}"
"""The id in Gymnasium's `module:EnvId` form: `gymnasium.make` imports the module first, so the
id resolves in any process, RLlib's env runners included."""
ENV_ALIASES = {"icu-sepsis": ICU_SEPSIS_GYM_ID}
"""Short names the command line accepts for `--env`."""


def resolve_env_id(env_id: str) -> str:
    """The Gymnasium id behind a command-line `--env` value (aliases resolved)."""
    return ENV_ALIASES.get(env_id, env_id)


def bare_id(env_id: str) -> str:
    """The id without its `module:` prefix, aliases resolved (`icu-sepsis` -> `ICUSepsis-v0`)."""
    return resolve_env_id(env_id).split(":")[-1]


def is_sepsis_env(env_id: str | None) -> bool:
    """Whether `env_id` is SepsisEnv (`SepsisEnv-v0` or `sepsis_env:SepsisEnv-v0`)."""
    return bool(env_id) and bare_id(env_id).startswith("SepsisEnv")


def is_icu_sepsis(env_id: str | None) -> bool:
    """Whether `env_id` (an alias, the bare id or the `module:` id) names the ICU-Sepsis MDP."""
    return bool(env_id) and bare_id(env_id) == ICU_SEPSIS_ENV_ID


def needs_sepsis_env_import(env_id: str) -> bool:
    """A bare `SepsisEnv-*` id needs `import sepsis_env` first (the `module:` form imports it)."""
    return resolve_env_id(env_id).startswith("SepsisEnv")


def check_env_id(env_id: str) -> str:
    """`env_id` with aliases resolved, once Gymnasium knows it (the module of a `module:EnvId`
    form imported first, as `gymnasium.make` does in every env runner).

    Raises ValueError with Gymnasium's own diagnosis, suggestion included ("Environment `CartPol`
    doesn't exist. Did you mean: `CartPole`?"), so that a typo is reported before Ray starts.
    """
    import importlib

    import gymnasium
    from gymnasium import error

    resolved = resolve_env_id(env_id)
    module, _, bare = resolved.rpartition(":")
    if not module and needs_sepsis_env_import(resolved):
        module = "sepsis_env"
    if module:
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise ValueError(
                f"cannot import {module!r}, the module of env {env_id!r}: {err}"
            ) from None
    try:
        gymnasium.spec(bare)
    except error.Error as err:
        raise ValueError(f"unknown Gymnasium env {env_id!r}: {err}") from None
    return resolved
