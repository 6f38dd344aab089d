"""SepsisEnv: a Gymnasium environment for organ-support decisions in septic ICU patients.

`import sepsis_env` registers `SepsisEnv-v0` (time limit 30 steps, native vector version);
`gymnasium.make("sepsis_env:SepsisEnv-v0")` imports and registers it on demand.
"""

from gymnasium.envs.registration import register, registry

from sepsis_env.env import (
    ACTION_NAMES,
    AGE_GROUPS,
    MAX_EPISODE_STEPS,
    OBS_HIGH,
    OBS_INDEX,
    OBS_LOW,
    OBS_NAMES,
    OBS_UNITS,
    OUTCOMES,
    SepsisEnv,
    SepsisVectorEnv,
    age_group,
    organ_score,
)
from sepsis_env.ids import SEPSIS_ENV_ID as ENV_ID

if ENV_ID not in registry:
    register(
        id=ENV_ID,
        entry_point="sepsis_env.env:SepsisEnv",
        vector_entry_point="sepsis_env.env:SepsisVectorEnv",
        max_episode_steps=MAX_EPISODE_STEPS,
    )

__all__ = [
    "ACTION_NAMES",
    "AGE_GROUPS",
    "ENV_ID",
    "MAX_EPISODE_STEPS",
    "OBS_HIGH",
    "OBS_INDEX",
    "OBS_LOW",
    "OBS_NAMES",
    "OBS_UNITS",
    "OUTCOMES",
    "SepsisEnv",
    "SepsisVectorEnv",
    "age_group",
    "organ_score",
]
