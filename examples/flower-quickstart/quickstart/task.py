"""quickstart: the model, the data and the training loop, with no Flower code.

Each client holds two digits of ten, as in a label-skewed federation; `load_data` adds
ReGL's fill, the digits it lacks drawn by a LoRA fine-tuned on its own images (the
lines marked ReGL: all this app needs to use it).
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import regl  # ReGL
from regl.data.datasets import load_split  # the shipped digits stand in for the user's own data


class Net(nn.Module):
    """A small CNN for 28×28 grayscale images."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 5)
        self.conv2 = nn.Conv2d(16, 32, 5)
        self.fc = nn.Linear(32 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1))


def to_loader(x: np.ndarray, y: np.ndarray, batch_size: int, shuffle: bool) -> DataLoader:
    images = torch.from_numpy(x).float().div(255).reshape(len(x), 1, 28, 28)
    return DataLoader(TensorDataset(images, torch.from_numpy(y).long()), batch_size=batch_size, shuffle=shuffle)


def load_data(partition_id: int, num_partitions: int, batch_size: int, fill_supplement: float) -> DataLoader:
    """Client `partition_id`'s training data: two digits, shared with the clients that hold the same two."""
    private = load_split("mnist-10k").private
    digits = [(2 * partition_id) % 10, (2 * partition_id + 1) % 10]
    same_digits = [p for p in range(num_partitions) if (2 * p) % 10 == digits[0]]
    mine = np.flatnonzero(np.isin(private.y, digits))[same_digits.index(partition_id) :: len(same_digits)]
    x, y = private.x[mine], private.y[mine]
    if fill_supplement > 0:  # ReGL: the digits this client lacks, drawn on this client
        x, y = regl.add_fill(
            x, y, private.class_names, supplement=fill_supplement, template="a handwritten digit {}",
            client_id=partition_id, lora_steps=100, prior_per_class=8, sampler="lcm", steps=1,
        )  # fmt: skip
    return to_loader(x, y, batch_size, shuffle=True)


def load_test_data(batch_size: int = 256) -> DataLoader:
    test = load_split("mnist-10k").test
    return to_loader(test.x, test.y, batch_size, shuffle=False)


def train(net: Net, loader: DataLoader, epochs: int, lr: float) -> float:
    """Local SGD; returns the mean training loss."""
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    net.train()
    total, seen = 0.0, 0
    for _ in range(epochs):
        for images, labels in loader:
            optimizer.zero_grad()
            loss = F.cross_entropy(net(images), labels)
            loss.backward()
            optimizer.step()
            total, seen = total + loss.item() * len(labels), seen + len(labels)
    return total / seen


def test(net: Net, loader: DataLoader) -> tuple[float, float]:
    """Loss and accuracy on `loader`."""
    net.eval()
    loss, correct = 0.0, 0
    with torch.no_grad():
        for images, labels in loader:
            logits = net(images)
            loss += F.cross_entropy(logits, labels, reduction="sum").item()
            correct += (logits.argmax(1) == labels).sum().item()
    return loss / len(loader.dataset), correct / len(loader.dataset)
