"""Client-level differential privacy of a federated run: its (ε, δ) from opacus's RDP accountant.

Every round all N clients send updates clipped to an L2 norm C and the server adds Gaussian
noise of std z·C/N to their uniform mean (Flower's fixed-clipping DP wrappers for the
classifier, regl/fl/adapter_aggregation.py:private_aggregate for the federated generator's
adapter), so one client joining or leaving moves the mean by at most C/N: each round is a
Gaussian mechanism with noise multiplier z and no sampling amplification (sampling rate 1).
Under partial participation (`--clients-per-round` M) the mean is over the M sampled clients and
the accounting still takes sampling rate 1: an upper bound on ε, since the seeded fixed-size draw
is not the Poisson sampling that the amplification bound assumes.
A run whose classifier and generator both train on the clients' data releases both: their
rounds compose (RDP adds up order by order), so its ε is that of the joint history.
"""

from __future__ import annotations

from collections.abc import Sequence

DELTA = 1e-5
ACCOUNTANT = "opacus RDPAccountant, client-level, sampling rate 1"


def composed_epsilon(releases: Sequence[tuple[float, int]], delta: float = DELTA) -> float:
    """ε after every (noise multiplier, rounds) in `releases`, each round a Gaussian mechanism, at `delta`."""
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = [(noise_multiplier, 1.0, rounds) for noise_multiplier, rounds in releases]
    return float(accountant.get_epsilon(delta))


def client_level_epsilon(noise_multiplier: float, rounds: int, delta: float = DELTA) -> float:
    """ε after `rounds` releases of a Gaussian mechanism with `noise_multiplier`, at `delta`."""
    return composed_epsilon([(noise_multiplier, rounds)], delta)


def privacy_report(
    noise_multiplier: float, clip: float, clipping: str, rounds: int, generator: dict | None = None
) -> dict:
    """What summary.json records of a DP mechanism; `generator`: the report of the federated generator's private
    adapter the same run trained first, composed into ε (`epsilon_alone` keeps this mechanism's own)."""
    releases = [(noise_multiplier, rounds)]
    if generator is not None:
        releases.insert(0, (generator["noise_multiplier"], generator["rounds"]))
    report = {
        "epsilon": composed_epsilon(releases),
        "delta": DELTA,
        "noise_multiplier": noise_multiplier,
        "clip": clip,
        "clipping": clipping,
        "rounds": rounds,
        "accountant": ACCOUNTANT,
    }
    if generator is not None:
        report |= {"epsilon_alone": client_level_epsilon(noise_multiplier, rounds), "generator": generator}
    return report
