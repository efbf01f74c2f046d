"""Every seed of a run, from one derivation: the run's seed, a named purpose and the purpose's keys.

Each consumer of randomness (a client's local training in a round, its personalized test
subset, its fill's diffusion images, a LoRA's initial adapter, a training step's
augmentation, ...) draws from a stream of its own: `derive_seed(run_seed, purpose, *keys)`
is numpy's `SeedSequence` with the run seed as entropy and (purpose, *keys) as spawn key,
so two purposes, or two keys of one purpose, never share a stream, and adding a consumer
never shifts another's seeds (ad-hoc sums and products such as `seed + client_id` did both:
two purposes keyed alike drew the same numbers, and seed s of client c + 1 was seed s + 1 of
client c).

A derived seed may root a derivation of its own (a LoRA's seed, a training call's seed): the
component derives its parts from the seed it is given, with its own purposes.

PURPOSES is append-only: a purpose's number is its place in the tuple, so reordering or
removing one changes the seeds of every purpose after it. Bump SEED_DERIVATION whenever
derived seeds change, so images and LoRAs cached under keys with the old seeds are not reused.
"""

from __future__ import annotations

import operator

import numpy as np

# stored in the key of everything cached on disk that was made with derived seeds (fill stores, base
# images, LoRAs, warm-start images, saved generated sets): images made with other seeds are not reused.
# 1 (no marker): the ad-hoc formulas before this module.
SEED_DERIVATION = 2

PURPOSES = (
    # rooted at a run's seed
    "model-init",  # the initial global model (every arm of one seed starts alike)
    "local-train",  # (client, round): a client's local update
    "in-domain-test",  # (client,): the uniform test subset shown in the client's look
    "personalized-test",  # (client,): the test subset in the client's class mix
    "centralized-train",  # (round,): the centralized arm's epochs of a round
    "warm-start-images",  # the server's base-generated warm-start images
    "warm-start-public",  # the server's warm-start draw from the public pool
    "warm-start-train",  # the warm start's training
    "mixup",  # (producer client, requesting client): mixup images made for another client
    "fill-diffusion",  # (client,): a client's fill images from the diffusion model (base or LoRA)
    "fill-noise",  # (client,): its natural-noise images
    "fill-mixup",  # (client,): recorded with the mixup shard it received (made with "mixup" seeds)
    "fill-public-equal",  # (client,): its draw from the public pool
    "fill-oracle",  # (client,): recorded with the oracle shard (the base images, "fill-diffusion" seeds)
    "fill-lora",  # (client,): the seed of the client's LoRA (LoraSettings.seed)
    "monitor-auxiliary",  # the Ratio Loss monitor's auxiliary images from the public pool
    "dp-noise",  # retired: DP noise is drawn from the server's secret seed (`secret_seed`), not the run's
    "judge-init",  # (kind,): the domain-fit judges' initial weights (0 look, 1 class)
    "judge-train",  # (kind,): their training
    "tstr-real",  # the real images a train-on-synthetic comparison draws from the public pool
    # rooted at a seed handed to a component
    "image",  # (index,): image `index` of a generation request with that seed
    "train-order",  # a training call's batch order
    "train-augment",  # (step,): the augmentation of a training call's step
    "lora-prior",  # a LoRA's prior images of the classes the client lacks
    "lora-init",  # the LoRA adapter's initial weights
    "lora-steps",  # the LoRA's training draws (batches, timesteps, noise)
    "pretrain-init",  # a pretrained base's initial weights
    "pretrain-vae",  # its VAE stage's draws
    "pretrain-unet",  # its UNet stage's draws
    "adapter-init",  # the federated generator's initial adapter (its A factors stay there under FFA-LoRA)
    "adapter-round",  # (client, round): a client's steps in a round of the federated generator
    "participation",  # (phase, round): the clients sampled to train in a round (phase 0 classifier, 1 generator)
    "lcm-distill",  # the few-step adapter's distillation draws (batches, timesteps, noise)
    "lora-fixed-loss",  # the fixed noise and timesteps of a LoRA's fixed-noise loss curve
)

SEED_LIMIT = 2**63  # derived seeds are below it: torch.manual_seed, default_rng and JSON-safe int64 all take them
KEY_LIMIT = 2**32  # a key of a purpose: a client, a round, a step, an image index


def derive_seed(run_seed: int, purpose: str, *keys: int) -> int:
    """The seed of `purpose` (one of PURPOSES) for `keys` in the run with `run_seed`; in [0, 2**63).

    The same inputs always give the same seed. `run_seed` is any int64 (a negative one is read as
    its two's complement, so int64 seeds map one-to-one onto SeedSequence's non-negative entropy);
    keys are in [0, 2**32). Take `% 2**32` of the result where an API wants 32 bits.
    """
    run_seed, keys = operator.index(run_seed), tuple(operator.index(key) for key in keys)  # ints, numpy's too
    if purpose not in PURPOSES:
        raise ValueError(f"unknown seed purpose {purpose!r}; add it to regl.seeds.PURPOSES (at the end)")
    if not -SEED_LIMIT <= run_seed < SEED_LIMIT:
        raise ValueError(f"a seed must be a 64-bit signed integer, got {run_seed}")
    for key in keys:
        if not 0 <= key < KEY_LIMIT:
            raise ValueError(f"the keys of seed purpose {purpose!r} must be in [0, 2**32), got {key}")
    sequence = np.random.SeedSequence(entropy=run_seed % 2**64, spawn_key=(PURPOSES.index(purpose), *keys))
    return int(sequence.generate_state(1, np.uint64)[0]) >> 1


def secret_seed() -> int:
    """A seed no client can know, for the server's differential-privacy noise.

    Every client receives the run's seed in its config, so noise derived from it could be
    regenerated and subtracted by any of them; DP noise is therefore not reproducible from the run's seed.
    """
    import secrets

    return secrets.randbits(63)
