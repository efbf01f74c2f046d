"""Do a client's generated images of the classes it lacks carry its look?

Two judges, both the NIID-Bench CNN trained on the public pool shown in every client look
(each image once in each look, so no class goes with a look): one tells the looks apart,
one the classes. For each client of
a finished run, the judges read the images its synthetic store holds for the classes the
client has no real image of, and report the fraction assigned to the client's own look
and the fraction recognised as their class. How far to trust either: the judges' own
accuracy on the real test set shown in every look, which the fit reports beside them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from regl.data.datasets import ImageDataset, load_split
from regl.data.domains import distinct_looks
from regl.fl.settings import ExperimentSettings
from regl.seeds import derive_seed
from regl.train.loop import predict_probs, train
from regl.train.models import build_model
from regl.train.settings import TrainSettings

JUDGE_TRAINING = TrainSettings(epochs=5)
GENERATED_SOURCES = ("diffusion", "oracle")


@dataclass
class Judges:
    looks: torch.nn.Module  # which of the run's distinct looks
    classes: torch.nn.Module
    look_names: tuple[str, ...]
    look_index: dict[int, int]  # ClientDomain.look → the look judge's output
    accuracy: dict[str, float]  # each judge's on the real test set in every look


def _in_every_look(data: ImageDataset, looks: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every image once in each look: pixels, look labels, class labels."""
    x = np.concatenate([domain.apply(data, "train").x for domain in looks])
    return x, np.repeat(np.arange(len(looks)), len(data)), np.tile(data.y, len(looks))


def train_judges(settings: ExperimentSettings) -> Judges:
    """Both judges for the run's dataset and domain; the same for every arm and seed of one --seed."""
    split = load_split(settings.dataset)
    spec = settings.partition
    looks = distinct_looks(spec.domain, spec.num_clients, spec.seed)
    names = tuple(domain.describe() for domain in looks)
    x, look_labels, class_labels = _in_every_look(split.public, looks)
    test_x, test_looks, test_classes = _in_every_look(split.test, looks)
    judges, accuracy = [], {}
    for judge, (kind, labels, test_labels, class_names) in enumerate(
        (
            ("look", look_labels, test_looks, names),
            ("class", class_labels, test_classes, split.public.class_names),
        )
    ):
        torch.manual_seed(derive_seed(settings.seed, "judge-init", judge))
        model = build_model("cnn", split.public.channels, len(class_names), split.public.resolution)
        seed = derive_seed(settings.seed, "judge-train", judge)
        train(model, ImageDataset(x, labels, class_names), JUDGE_TRAINING, seed=seed)
        predicted = predict_probs(model, ImageDataset(test_x, test_labels, class_names)).argmax(axis=1)
        accuracy[kind] = float((predicted == test_labels).mean())
        judges.append(model)
    return Judges(judges[0], judges[1], names, {d.look: number for number, d in enumerate(looks)}, accuracy)


def missing_class_fit(
    settings: ExperimentSettings, stored: list[dict[str, ImageDataset]], judges: Judges
) -> dict[str, Any] | None:
    """Own-look and recognised fractions over every client's generated images of the classes it lacks.

    `stored[j]` is client j's store shards; None when no client has generated images of a missing class.
    """
    from regl.fl.experiment import client_data, client_domain

    own, recognised, count = 0, 0, 0
    for client_id, shards in enumerate(stored):
        missing = client_data(settings, client_id).class_counts() == 0
        own_look = judges.look_index[client_domain(settings, client_id).look]
        for source in GENERATED_SOURCES:
            if source not in shards:
                continue
            images = shards[source].subset(np.flatnonzero(missing[shards[source].y]))
            if not len(images):
                continue
            own += int((predict_probs(judges.looks, images).argmax(axis=1) == own_look).sum())
            recognised += int((predict_probs(judges.classes, images).argmax(axis=1) == images.y).sum())
            count += len(images)
    if not count:
        return None
    return {
        "own_look": own / count,
        "recognised": recognised / count,
        "images": count,
        "look_judge_accuracy": judges.accuracy["look"],
        "class_judge_accuracy": judges.accuracy["class"],
        "looks": list(judges.look_names),
    }
