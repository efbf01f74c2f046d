"""Classifiers: a LeNet-style CNN for 28×28 grayscale and a ResNet-18 for 32×32 RGB."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from regl.errors import ReglError


class SmallCNN(nn.Module):
    """The simple CNN of NIID-Bench (two 5×5 convolutions, three linear layers)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, resolution: int = 28) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        side = ((resolution - 4) // 2 - 4) // 2
        self.fc1 = nn.Linear(16 * side * side, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return F.relu(self.fc2(F.relu(self.fc1(x.flatten(1)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(self.features(x))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 with the CIFAR stem (3×3 conv, no max-pool) for 32×32 inputs."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        layers, in_planes = [], 64
        for planes, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
            layers += [BasicBlock(in_planes, planes, stride), BasicBlock(planes, planes, 1)]
            in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(512, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


MODEL_NAMES = ("cnn", "resnet18")


def build_model(name: str, in_channels: int, num_classes: int, resolution: int) -> nn.Module:
    if name == "cnn":
        if resolution < 16:
            raise ReglError(f"the cnn needs images of at least 16×16 pixels, got {resolution}×{resolution}")
        return SmallCNN(in_channels, num_classes, resolution)
    if name == "resnet18":
        return ResNet18(in_channels, num_classes)
    raise ReglError(f"unknown model {name!r}; use one of {', '.join(MODEL_NAMES)}")


def default_model_name(in_channels: int) -> str:
    """Grayscale data gets the small CNN, colour data the ResNet-18."""
    return "cnn" if in_channels == 1 else "resnet18"


def output_layer(model: nn.Module) -> nn.Linear:
    """The last linear layer: what a frozen feature extractor leaves to train, and what the monitor reads."""
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not layers:
        raise ReglError(f"{type(model).__name__} has no linear output layer")
    return layers[-1]
