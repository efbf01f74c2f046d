"""Local training and evaluation loops; no federated code lives here."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from regl.data.datasets import ImageDataset
from regl.seeds import derive_seed
from regl.train import metrics
from regl.train.augment import Augment
from regl.train.losses import Loss, proximal_term
from regl.train.models import output_layer
from regl.train.settings import TrainSettings


def to_tensor(x: np.ndarray) -> torch.Tensor:
    """uint8 N×H×W×C → float N×C×H×W in [-1, 1]."""
    return torch.tensor(x).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)  # a copy: x may be read-only


def train(
    model: nn.Module,
    data: ImageDataset,
    settings: TrainSettings,
    seed: int,
    loss: Loss = F.cross_entropy,
    augment: Augment | None = None,
    proximal_mu: float = 0.0,
    head_only: bool = False,
) -> float:
    """Train in place; returns the mean `loss` of the last epoch (without FedProx's proximal term).

    `proximal_mu` > 0 adds μ/2·‖w − w_start‖² (FedProx); `head_only` trains the output layer alone.
    The batch order and each step's augmentation have seeds of their own, derived from `seed` (regl.seeds).
    """
    generator = torch.Generator().manual_seed(derive_seed(seed, "train-order"))
    trained = output_layer(model).parameters() if head_only else model.parameters()
    optimizer = torch.optim.SGD(trained, lr=settings.lr, momentum=settings.momentum)
    anchor = [p.detach().clone() for p in model.parameters()] if proximal_mu else None
    x, y = to_tensor(data.x), torch.tensor(data.y)
    model.train()
    last_loss, step = float("nan"), 0
    for _ in range(settings.epochs):
        order = torch.randperm(len(y), generator=generator)
        total, count = 0.0, 0
        for start in range(0, len(y), settings.batch_size):
            batch = order[start : start + settings.batch_size]
            if len(batch) < 2 and count > 0:
                continue
            inputs = x[batch] if augment is None else augment(x[batch], derive_seed(seed, "train-augment", step))
            data_loss = loss(model(inputs), y[batch])
            objective = data_loss if anchor is None else data_loss + proximal_term(model, anchor, proximal_mu)
            optimizer.zero_grad(set_to_none=True)
            objective.backward()
            optimizer.step()
            total += data_loss.item() * len(batch)
            count += len(batch)
            step += 1
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
