"""The server's step of the federated generator: one adapter from the clients' trained copies.

A LoRA adapter is, per adapted layer, a pair of factors B (out×r) and A (r×in) whose product
B·A is added to the frozen weight. Averaging the factors separately is not averaging the
products (mean(B)·mean(A) ≠ mean(B·A)), which is what federated LoRA has to settle. The rules:
- `fedavg`: each factor averaged on its own, weighted (FedAvg over the adapter's tensors);
- `ffa`: FFA-LoRA (Sun et al., 2024): A stays at its shared initialisation and only B trains,
  so the mean of the Bs times the common A is exactly the mean of the products;
- `product`: the weighted mean of the products, re-factorised to rank r by a truncated SVD
  (B = U·√S, A = √S·Vᵀ), the best rank-r fit of the averaged update.
Weights are per client (its images); a client that sent nothing has weight 0 and changes
nothing. Torch-free: arrays in,
arrays out, named as peft names them (`...lora_A.weight`, `...lora_B.weight`).

`private_aggregate` is the client-level DP form of `ffa` and `fedavg` (`--fill-adapter-dp-noise`):
the Gaussian mechanism on the clients' clipped updates, accounted by regl/fl/privacy.py.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from regl.errors import ReglError

RULES = ("ffa", "fedavg", "product")
# the rules whose new adapter is the global one plus the mean of the clients' updates, which clipping bounds;
# `product` re-factorises the mean product by SVD, a step the clipped updates' sensitivity does not cover
PRIVATE_RULES = ("ffa", "fedavg")
Adapter = dict[str, np.ndarray]


def layer_pairs(adapter: Mapping[str, np.ndarray]) -> dict[str, tuple[str, str]]:
    """Each adapted layer's (A name, B name)."""
    pairs = {}
    for name in adapter:
        if ".lora_A." in name:
            pairs[name.replace(".lora_A.", ".")] = (name, name.replace(".lora_A.", ".lora_B."))
    missing = [b for _, b in pairs.values() if b not in adapter]
    if missing or len(adapter) != 2 * len(pairs):
        raise ReglError(f"an adapter's tensors come in lora_A / lora_B pairs; unpaired: {missing or sorted(adapter)}")
    return pairs


def aggregate(global_adapter: Adapter, updates: list[Adapter], weights: list[float], rule: str) -> Adapter:
    """The new global adapter from the clients' trained adapters and their weights."""
    if rule not in RULES:
        raise ReglError(f"unknown adapter aggregation {rule!r}; use one of {', '.join(RULES)}")
    if len(updates) != len(weights):
        raise ReglError(f"{len(updates)} client adapters but {len(weights)} weights")
    w = np.asarray(weights, dtype=np.float64)
    if (w < 0).any():
        raise ReglError(f"client weights must be ≥ 0, got {weights}")
    if not len(updates) or not w.sum() > 0:
        return {name: value.copy() for name, value in global_adapter.items()}
    w = w / w.sum()
    for update in updates:
        if set(update) != set(global_adapter):
            raise ReglError("a client's adapter has other layers than the global one")
    if rule == "fedavg":
        return {name: _mean([u[name] for u in updates], w, global_adapter[name].dtype) for name in global_adapter}
    out = {}
    for a_name, b_name in layer_pairs(global_adapter).values():
        if rule == "ffa":
            out[a_name] = global_adapter[a_name].copy()  # frozen: every client trained from it
            out[b_name] = _mean([u[b_name] for u in updates], w, global_adapter[b_name].dtype)
        else:
            a_global, b_global = global_adapter[a_name], global_adapter[b_name]
            product = sum(wi * _product(u[a_name], u[b_name]) for wi, u in zip(w, updates))
            b, a = refactorise(product, a_global.shape[0])
            out[b_name], out[a_name] = b.reshape(b_global.shape).astype(b_global.dtype), a.reshape(a_global.shape)
            out[a_name] = out[a_name].astype(a_global.dtype)
    return out


def trained_names(adapter: Mapping[str, np.ndarray], rule: str) -> list[str]:
    """The tensors a client's round changes under `rule`, sorted: FFA-LoRA trains the Bs only, A stays shared."""
    if rule == "ffa":
        return sorted(b for _, b in layer_pairs(adapter).values())
    return sorted(adapter)


def update_norm(global_adapter: Adapter, trained: Adapter, rule: str) -> float:
    """The L2 norm of a client's update (trained − global) over the tensors `rule` trains, as one flat vector."""
    names = trained_names(global_adapter, rule)
    return float(np.sqrt(sum(np.square(_delta(global_adapter, trained, name)).sum() for name in names)))


def private_aggregate(
    global_adapter: Adapter,
    updates: list[Adapter],
    weights: list[float],
    rule: str,
    clip: float,
    noise_multiplier: float,
    seed: int,
) -> Adapter:
    """The new global adapter under client-level differential privacy: the Gaussian mechanism on the updates.

    Each client's update (trained − global, over the tensors `rule` trains) is scaled down to an
    L2 norm of at most `clip`, the N updates are averaged uniformly, and Gaussian noise of std
    `noise_multiplier`·`clip`/N is added to every coordinate of the mean: one client joining or
    leaving moves the mean by at most clip/N, so each round is a Gaussian mechanism with noise
    multiplier z (regl/fl/privacy.py accounts it). Weighting by images would let a client's
    count scale its influence past that bound, so the weights must be equal. The noise is drawn
    from `seed`, which the server keeps from the clients (regl/seeds.py:secret_seed).
    """
    if rule not in PRIVATE_RULES:
        raise ReglError(
            f"client-level DP on the adapter covers the rules {', '.join(PRIVATE_RULES)}, not {rule!r}: its SVD "
            "re-factorisation is not the mean of the clipped updates"
        )
    if len(updates) != len(weights):
        raise ReglError(f"{len(updates)} client adapters but {len(weights)} weights")
    if len(set(weights)) > 1 or any(not w > 0 for w in weights):
        raise ReglError(
            f"client-level DP averages the clients' updates uniformly: equal positive weights, got {weights}"
        )
    if not clip > 0 or not noise_multiplier >= 0:
        raise ReglError(f"DP needs a clip > 0 and a noise multiplier ≥ 0, got clip {clip}, noise {noise_multiplier}")
    out = {name: value.copy() for name, value in global_adapter.items()}
    if not updates:
        return out
    for update in updates:
        if set(update) != set(global_adapter):
            raise ReglError("a client's adapter has other layers than the global one")
    names = trained_names(global_adapter, rule)
    total = {name: np.zeros(global_adapter[name].shape) for name in names}
    for update in updates:
        norm = update_norm(global_adapter, update, rule)
        scale = clip / norm if norm > clip else 1.0
        for name in names:
            total[name] += scale * _delta(global_adapter, update, name)
    rng = np.random.default_rng(seed)
    std = noise_multiplier * clip / len(updates)
    for name in names:
        noisy = total[name] / len(updates) + rng.normal(0.0, std, total[name].shape)
        out[name] = (global_adapter[name].astype(np.float64) + noisy).astype(global_adapter[name].dtype)
    return out


def _delta(global_adapter: Adapter, trained: Adapter, name: str) -> np.ndarray:
    return trained[name].astype(np.float64) - global_adapter[name].astype(np.float64)


def _product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """B·A as a matrix: a convolution's factors (r×in×k×k, out×r×1×1) flattened to (r×in·k·k, out×r)."""
    return b.reshape(b.shape[0], -1).astype(np.float64) @ a.reshape(a.shape[0], -1).astype(np.float64)


def _mean(arrays: list[np.ndarray], w: np.ndarray, dtype: np.dtype) -> np.ndarray:
    return sum(wi * a.astype(np.float64) for wi, a in zip(w, arrays)).astype(dtype)


def refactorise(product: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """B (out×r), A (r×in) with B·A the best rank-r approximation of `product`, the norm split evenly."""
    u, s, vt = np.linalg.svd(product, full_matrices=False)
    root = np.sqrt(s[:rank])
    b, a = u[:, :rank] * root, root[:, None] * vt[:rank]
    missing = rank - len(root)  # a rank above the layer's size: the rest of the factors are zero
    return np.pad(b, ((0, 0), (0, missing))), np.pad(a, ((0, missing), (0, 0)))


def products(adapter: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each layer's B·A: what the adapter adds to the frozen weights."""
    return {layer: _product(adapter[a], adapter[b]) for layer, (a, b) in layer_pairs(adapter).items()}
