"""The server joins each requester's mixup images in producer order, whatever order the replies arrive in."""

import itertools

import numpy as np

from regl.clients.fill_phase import mixes_by_requester


def reply(producer: int, requesters: list[int]) -> tuple[int, dict[str, np.ndarray]]:
    arrays = {}
    for r in requesters:
        arrays[f"x-{r}"] = np.full((2, 1, 2, 2), 10 * producer + r, dtype=np.uint8)
        arrays[f"y-{r}"] = np.array([r, r], dtype=np.int64)
    return producer, arrays


def test_mixes_do_not_depend_on_reply_order():
    replies = [reply(0, [1, 2]), reply(1, [0, 2]), reply(2, [0, 1])]
    joined = [mixes_by_requester(list(order)) for order in itertools.permutations(replies)]
    for other in joined[1:]:
        assert other.keys() == joined[0].keys() == {0, 1, 2}
        for r in other:
            assert np.array_equal(other[r][0], joined[0][r][0]) and np.array_equal(other[r][1], joined[0][r][1])
    x, y = joined[0][2]
    assert x[:, 0, 0, 0].tolist() == [2, 2, 12, 12]  # producer 0's images, then producer 1's
    assert y.tolist() == [2, 2, 2, 2]
