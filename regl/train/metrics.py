"""Evaluation metrics of the ReGL and Ratio Loss papers, from predicted probabilities."""

from __future__ import annotations

import numpy as np


def accuracy(labels: np.ndarray, probs: np.ndarray) -> float:
    return float((probs.argmax(axis=1) == labels).mean())


def per_class_accuracy(labels: np.ndarray, probs: np.ndarray, num_classes: int) -> np.ndarray:
    """Recall of each class; NaN for a class absent from `labels`."""
    predicted = probs.argmax(axis=1)
    out = np.full(num_classes, np.nan)
    for c in range(num_classes):
        mask = labels == c
        if mask.any():
            out[c] = (predicted[mask] == c).mean()
    return out


def minority_accuracy(per_class: np.ndarray, minority_classes: tuple[int, ...]) -> float | None:
    """Ac.M of the Ratio Loss paper: mean accuracy over the minority classes."""
    if not minority_classes:
        return None
    return float(np.nanmean(per_class[list(minority_classes)]))


def macro_auc(labels: np.ndarray, probs: np.ndarray) -> float:
    """Macro-averaged one-vs-rest ROC AUC over the classes present in `labels`."""
    from sklearn.metrics import roc_auc_score

    present = np.unique(labels)
    if len(present) < 2:
        return float("nan")
    aucs = [roc_auc_score(labels == c, probs[:, c]) for c in present]
    return float(np.mean(aucs))


def uniform_test_indices(test_labels: np.ndarray, num_classes: int, size: int, seed: int) -> np.ndarray:
    """A test subset with every class equally often (size // num_classes each, capped by the test set)."""
    rng = np.random.default_rng(seed)
    picked = []
    for c in range(num_classes):
        pool = np.flatnonzero(test_labels == c)
        picked.append(rng.choice(pool, size=min(len(pool), size // num_classes), replace=False))
    return np.sort(np.concatenate(picked))


def personalized_test_indices(test_labels: np.ndarray, client_counts: np.ndarray, size: int, seed: int) -> np.ndarray:
    """A test subset drawn with the client's own label distribution, as ReGL reports it.

    Classes the client does not hold get no test samples; each held class gets
    round(size * share) samples, capped by what the test set has.
    """
    rng = np.random.default_rng(seed)
    share = client_counts / client_counts.sum()
    picked = []
    for c in np.flatnonzero(share):
        pool = np.flatnonzero(test_labels == c)
        take = min(len(pool), max(1, int(round(size * share[c]))))
        picked.append(rng.choice(pool, size=take, replace=False))
    return np.sort(np.concatenate(picked))
