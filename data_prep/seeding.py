"""Independent random streams from the run's one seed.

One seed enters at the top of a run and every stage receives it. Stages must not all call
`numpy.random.default_rng(seed)`: identical streams correlate draws that should be independent
(it once made the patient split decide the non-septic feature-window lengths, so test patients got
shorter windows than training patients and every classifier scored below chance on them). Each
purpose draws from its own stream instead.
"""

from __future__ import annotations

import zlib

import numpy as np


def rng_for(seed: int, purpose: str) -> np.random.Generator:
    """The random stream of one `purpose` (e.g. "split") of a run seeded with `seed`."""
    return np.random.default_rng([int(seed), zlib.crc32(purpose.encode())])
