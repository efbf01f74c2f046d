"""Class-balance-weighted aggregation: each client's weight in the server's average.

FedAvg weights client k by its share of all examples, so a class that few clients hold is
outweighed by a class that many hold. Here client k's weight is its mean share of each
class's count over the round's clients: w_k = (1/|C⁺|) Σ_{c∈C⁺} n_{k,c} / N_c, with N_c the
round's total of class c and C⁺ the classes some client holds; the weights sum to 1. A client
holding most of a rare class then weighs as much as one holding most of a common one.
"""

from __future__ import annotations

import numpy as np


def class_balanced_weights(histograms: np.ndarray) -> np.ndarray:
    """`histograms`: clients × classes counts → one weight per client, summing to 1."""
    histograms = np.asarray(histograms, dtype=np.float64)
    totals = histograms.sum(axis=0)
    held = totals > 0
    if not held.any():
        raise ValueError("no client reported any example")
    return (histograms[:, held] / totals[held]).mean(axis=1)
