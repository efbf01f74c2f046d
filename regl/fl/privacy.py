"""Client-level differential privacy of a federated run: its (ε, δ) from opacus's RDP accountant.

Every round all N clients send updates clipped to an L2 norm C and the server adds Gaussian
noise of std z·C/N to their uniform mean (Flower's fixed-clipping DP wrappers), so one
client joining or leaving moves the mean by at most C/N: each round is a Gaussian
mechanism with noise multiplier z and no sampling amplification (sampling rate 1).
"""

from __future__ import annotations

DELTA = 1e-5


def client_level_epsilon(noise_multiplier: float, rounds: int, delta: float = DELTA) -> float:
    """ε after `rounds` releases of a Gaussian mechanism with `noise_multiplier`, at `delta`."""
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = [(noise_multiplier, 1.0, rounds)]
    return float(accountant.get_epsilon(delta))


def privacy_report(noise_multiplier: float, clip: float, clipping: str, rounds: int) -> dict:
    """What summary.json records of a DP run."""
    return {
        "epsilon": client_level_epsilon(noise_multiplier, rounds),
        "delta": DELTA,
        "noise_multiplier": noise_multiplier,
        "clip": clip,
        "clipping": clipping,
        "rounds": rounds,
        "accountant": "opacus RDPAccountant, client-level, sampling rate 1",
    }
