"""Partial participation: which clients train in a round (`--clients-per-round`).

Flower's strategies sample `fraction_train` of the connected nodes uniformly without
replacement, from Python's unseeded `random` over node ids that change every run. Here the
draw is over client ids, from the run's seed and the round (regl/seeds.py), so a rerun, a
resumed run and every arm of a bench seed sample the same clients in the same rounds.
"""

from __future__ import annotations

import numpy as np

from regl.seeds import derive_seed

PHASES = {"classifier": 0, "generator": 1}  # the federated generator's rounds draw apart from the classifier's


def sample_clients(seed: int, phase: str, server_round: int, available: list[int], per_round: int) -> list[int]:
    """`per_round` of the `available` clients (all of them when 0 or more than there are), sorted."""
    if not per_round or per_round >= len(available):
        return sorted(available)
    rng = np.random.default_rng(derive_seed(seed, "participation", PHASES[phase], server_round))
    return sorted(int(c) for c in rng.choice(sorted(available), size=per_round, replace=False))
