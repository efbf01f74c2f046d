"""Client domains (feature skew): every client's images carry a look of its own.

A domain is fixed by its kind, the client id, the number of clients and the seed, so a
client's training images, its test subset and any image made for it later get the same
look. Kinds:
- `rotate`: DomainBed's Rotated-MNIST angles, client j at ROTATE_ANGLES[(j + seed) % 6];
- `style`: stroke thickness, gamma and inversion combined (STYLES), client j at
  STYLES[(j + seed) % 6]; consecutive entries differ in all three, so no two neighbouring
  clients look alike;
- `noise`: NIID-Bench's feature imbalance, Gaussian noise of std 0.1·j/(N−1) on pixels
  in [0, 1], drawn afresh per image from (seed, client, stream).
The global test set shows test image i in the domain of client i mod N (`round_robin`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from regl.data.datasets import ImageDataset
from regl.errors import ReglError

DOMAIN_KINDS = ("none", "rotate", "style", "noise")
ROTATE_ANGLES = (0, 15, 30, 45, 60, 75)
NOISE_STD = 0.1
STREAMS = ("train", "test", "generated")


@dataclass(frozen=True)
class Style:
    stroke: str  # thin (2×2 erosion), normal, thick (3×3 dilation)
    gamma: float  # pixel' = pixel^gamma on [0, 1]: < 1 brightens, > 1 darkens
    inverted: bool

    def describe(self) -> str:
        return f"{self.stroke}, γ {self.gamma:g}{', inverted' if self.inverted else ''}"


STYLES = (
    Style("normal", 1.0, False),
    Style("thick", 0.5, True),
    Style("thin", 2.0, False),
    Style("thick", 1.0, True),
    Style("normal", 0.5, False),
    Style("thin", 2.0, True),
)


def check_domain(kind: str) -> None:
    if kind not in DOMAIN_KINDS:
        raise ReglError(f"unknown domain {kind!r}; use one of {', '.join(DOMAIN_KINDS)}")


@dataclass(frozen=True)
class ClientDomain:
    kind: str
    client: int
    num_clients: int
    seed: int = 0

    def __post_init__(self) -> None:
        check_domain(self.kind)
        if not 0 <= self.client < self.num_clients:
            raise ReglError(f"client {self.client} does not exist among {self.num_clients} clients")

    def _cycled(self, choices: tuple):
        return choices[(self.client + self.seed) % len(choices)]

    @property
    def angle(self) -> int:
        return self._cycled(ROTATE_ANGLES)

    @property
    def style(self) -> Style:
        return self._cycled(STYLES)

    @property
    def noise_std(self) -> float:
        return NOISE_STD * self.client / (self.num_clients - 1) if self.num_clients > 1 else 0.0

    @property
    def look(self) -> int:
        """Which look the client's images have: clients with the same look cannot be told apart."""
        return {"rotate": self.angle, "style": STYLES.index(self.style), "noise": self.client}.get(self.kind, 0)

    def describe(self) -> str:
        return {
            "none": "as is",
            "rotate": f"rotated {self.angle}°",
            "style": self.style.describe(),
            "noise": f"noise std {self.noise_std:.3f}",
        }[self.kind]

    def apply(self, data: ImageDataset, stream: str = "train") -> ImageDataset:
        """The images in this client's look; labels and shapes unchanged."""
        if stream not in STREAMS:
            raise ReglError(f"unknown image stream {stream!r}; use one of {', '.join(STREAMS)}")
        if self.kind == "none" or not len(data):
            return data
        if self.kind == "rotate":
            x = _rotate(data.x, self.angle)
        elif self.kind == "style":
            x = _restyle(data.x, self.style)
        else:
            rng = np.random.default_rng((self.seed, self.client, STREAMS.index(stream)))
            noisy = data.x / 255.0 + rng.normal(0.0, self.noise_std, data.x.shape)
            x = np.rint(np.clip(noisy, 0, 1) * 255).astype(np.uint8)
        return ImageDataset(x, data.y, data.class_names)


def _rotate(x: np.ndarray, angle: float) -> np.ndarray:
    from scipy.ndimage import rotate

    if angle == 0:
        return x
    turned = rotate(x.astype(np.float32), angle, axes=(2, 1), reshape=False, order=1, mode="constant", cval=0.0)
    return np.rint(np.clip(turned, 0, 255)).astype(np.uint8)


def _restyle(x: np.ndarray, style: Style) -> np.ndarray:
    from scipy.ndimage import grey_dilation, grey_erosion

    if style.stroke == "thick":
        x = grey_dilation(x, size=(1, 3, 3, 1))
    elif style.stroke == "thin":
        x = grey_erosion(x, size=(1, 2, 2, 1))
    pixels = (x / 255.0) ** style.gamma
    if style.inverted:
        pixels = 1.0 - pixels
    return np.rint(pixels * 255).astype(np.uint8)


def distinct_looks(kind: str, num_clients: int, seed: int = 0) -> list[ClientDomain]:
    """The first client of each look among the N clients, in order of their looks."""
    firsts: dict[int, ClientDomain] = {}
    for client in range(num_clients):
        firsts.setdefault(
            ClientDomain(kind, client, num_clients, seed).look, ClientDomain(kind, client, num_clients, seed)
        )
    return [firsts[look] for look in sorted(firsts)]


def sample_row(data: ImageDataset, size: int) -> np.ndarray:
    """One H×(size·W) grayscale strip: the first image of each class the client holds, in turn."""
    firsts = [np.flatnonzero(data.y == c)[0] for c in range(data.num_classes) if (data.y == c).any()]
    picks = [firsts[i % len(firsts)] for i in range(size)] if firsts else []
    tiles = [data.x[i].mean(axis=2).astype(np.uint8) for i in picks]
    return np.concatenate(tiles, axis=1) if tiles else np.zeros((data.resolution, 0), dtype=np.uint8)


def round_robin(data: ImageDataset, kind: str, num_clients: int, seed: int = 0) -> ImageDataset:
    """Image i in the domain of client i mod N: every domain equally often, each image once."""
    check_domain(kind)
    if kind == "none":
        return data
    x = data.x.copy()
    for client in range(num_clients):
        rows = np.arange(client, len(data), num_clients)
        x[rows] = ClientDomain(kind, client, num_clients, seed).apply(data.subset(rows), "test").x
    return ImageDataset(x, data.y, data.class_names)
