"""Client domains: deterministic per (client, seed), labels and shapes kept, each look what it says."""

import numpy as np
import pytest

from regl.data.datasets import ImageDataset
from regl.data.domains import STYLES, ClientDomain, Style, _restyle, round_robin
from regl.errors import ReglError


def images(n: int = 12, seed: int = 0) -> ImageDataset:
    rng = np.random.default_rng(seed)
    x = np.zeros((n, 28, 28, 1), dtype=np.uint8)
    x[:, 10:18, 6:22] = rng.integers(100, 256, (n, 8, 16, 1), dtype=np.uint8)
    return ImageDataset(x, rng.integers(0, 10, n), tuple(str(c) for c in range(10)))


@pytest.mark.parametrize("kind", ["rotate", "style", "noise"])
def test_each_domain_is_deterministic_and_keeps_labels_and_shapes(kind):
    data = images()
    first = ClientDomain(kind, 3, 10, seed=0).apply(data)
    again = ClientDomain(kind, 3, 10, seed=0).apply(data)
    assert np.array_equal(first.x, again.x)
    assert first.x.shape == data.x.shape and first.x.dtype == np.uint8
    assert np.array_equal(first.y, data.y) and first.class_names == data.class_names
    assert not np.array_equal(first.x, data.x)
    other_client = ClientDomain(kind, 4, 10, seed=0).apply(data)
    other_seed = ClientDomain(kind, 3, 10, seed=1).apply(data)
    assert not np.array_equal(first.x, other_client.x) and not np.array_equal(first.x, other_seed.x)


def test_none_returns_the_images_untouched():
    data = images()
    assert ClientDomain("none", 5, 10).apply(data) is data


def test_rotate_turns_a_bar_by_the_clients_angle():
    bar = np.zeros((1, 28, 28, 1), dtype=np.uint8)
    bar[0, 13:15, 4:24] = 255
    data = ImageDataset(bar, np.zeros(1, dtype=np.int64), ("a",))
    assert ClientDomain("rotate", 0, 10).apply(data).x is bar  # client 0, seed 0: 0°
    domain = ClientDomain("rotate", 3, 10)  # 45°
    assert domain.angle == 45
    turned = domain.apply(data).x[0, :, :, 0]
    rows, cols = np.nonzero(turned > 128)
    assert np.corrcoef(rows, cols)[0, 1] ** 2 > 0.9  # a diagonal line
    assert abs(int(turned.sum()) - int(bar.sum())) / bar.sum() < 0.15  # the bar stays inside the frame


def test_strokes_grow_or_shrink_and_inversion_flips():
    data = images()
    ink = (data.x > 0).sum()
    assert (_restyle(data.x, Style("thick", 1.0, False)) > 0).sum() > ink
    assert (_restyle(data.x, Style("thin", 1.0, False)) > 0).sum() < ink
    inverted = _restyle(data.x, Style("normal", 1.0, True))
    assert np.array_equal(inverted, 255 - data.x)
    brighter = _restyle(data.x, Style("normal", 0.5, False))
    assert (brighter >= data.x).all() and (brighter > data.x).any()


def test_neighbouring_styles_differ_in_every_attribute():
    for a, b in zip(STYLES, STYLES[1:] + STYLES[:1]):
        assert a.stroke != b.stroke and a.gamma != b.gamma and a.inverted != b.inverted


def test_noise_grows_with_the_client_id():
    gray = np.full((200, 28, 28, 1), 128, dtype=np.uint8)
    data = ImageDataset(gray, np.zeros(200, dtype=np.int64), ("a",))
    assert np.array_equal(ClientDomain("noise", 0, 10).apply(data).x, gray)
    for client in (3, 9):
        domain = ClientDomain("noise", client, 10)
        measured = (domain.apply(data).x / 255.0 - 128 / 255).std()
        assert measured == pytest.approx(0.1 * client / 9, rel=0.05)
    train = ClientDomain("noise", 9, 10).apply(data, "train").x
    test = ClientDomain("noise", 9, 10).apply(data, "test").x
    assert not np.array_equal(train, test)  # fresh noise per stream


def test_round_robin_shows_image_i_in_client_i_mod_n_domain():
    data = images(25)
    shown = round_robin(data, "style", 4)
    assert np.array_equal(shown.y, data.y)
    for i in range(len(data)):
        alone = ClientDomain("style", i % 4, 4).apply(data.subset(np.array([i]))).x[0]
        assert np.array_equal(shown.x[i], alone)


def test_bad_domains_are_named():
    with pytest.raises(ReglError, match="unknown domain 'blur'"):
        ClientDomain("blur", 0, 10)
    with pytest.raises(ReglError, match="client 10 does not exist"):
        ClientDomain("rotate", 10, 10)
    with pytest.raises(ReglError, match="unknown image stream"):
        ClientDomain("noise", 1, 10).apply(images(), "val")
