"""Local training and evaluation loops; no federated code lives here."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from regl.data.datasets import ImageDataset
from regl.train import metrics
from regl.train.settings import TrainSettings


def to_tensor(x: np.ndarray) -> torch.Tensor:
    """uint8 N×H×W×C → float N×C×H×W in [-1, 1]."""
    return torch.tensor(x).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)  # a copy: x may be read-only


def train(model: nn.Module, data: ImageDataset, settings: TrainSettings, seed: int) -> float:
    """Train in place with cross-entropy; returns the mean loss of the last epoch."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=settings.momentum)
    x, y = to_tensor(data.x), torch.tensor(data.y)
    model.train()
    last_loss = float("nan")
    for _ in range(settings.epochs):
        order = torch.randperm(len(y), generator=generator)
        total, count = 0.0, 0
        for start in range(0, len(y), settings.batch_size):
            batch = order[start : start + settings.batch_size]
            if len(batch) < 2 and count > 0:
                continue
            loss = F.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
            count += len(batch)
        last_loss = total / max(count, 1)
    return last_loss


@torch.no_grad()
def predict_probs(model: nn.Module, data: ImageDataset, batch_size: int = 1024) -> np.ndarray:
    model.eval()
    out = []
    for start in range(0, len(data), batch_size):
        logits = model(to_tensor(data.x[start : start + batch_size]))
        out.append(torch.softmax(logits, dim=1).numpy())
    return np.concatenate(out) if out else np.zeros((0, data.num_classes))


def evaluate(model: nn.Module, data: ImageDataset, minority_classes: tuple[int, ...] = ()) -> dict:
    """Accuracy, per-class and minority-class accuracy, macro AUC and loss on `data`."""
    probs = predict_probs(model, data)
    per_class = metrics.per_class_accuracy(data.y, probs, data.num_classes)
    picked = probs[np.arange(len(data.y)), data.y]
    return {
        "accuracy": metrics.accuracy(data.y, probs),
        "loss": float(-np.log(np.clip(picked, 1e-12, None)).mean()),
        "auc": metrics.macro_auc(data.y, probs),
        "minority_accuracy": metrics.minority_accuracy(per_class, minority_classes),
        "per_class_accuracy": [None if np.isnan(a) else float(a) for a in per_class],
    }
