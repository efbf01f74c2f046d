"""Atomic writes: the whole file or the old one, readable by others, no temporary left behind."""

import json
import math
import stat

from regl.atomic import write_bytes_atomically, write_json_atomically, write_text_atomically


def test_every_atomic_write_makes_its_folder_and_a_world_readable_file(tmp_path):
    for name, write in (
        ("a.json", lambda p: write_json_atomically(p, {"x": math.inf, "y": [1.5]})),
        ("b.txt", lambda p: write_text_atomically(p, "läuft\n")),
        ("c.bin", lambda p: write_bytes_atomically(p, b"\x00\x01")),
    ):
        path = tmp_path / "new" / name
        write(path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert json.loads((tmp_path / "new" / "a.json").read_text()) == {"x": "inf", "y": [1.5]}
    assert (tmp_path / "new" / "b.txt").read_text() == "läuft\n"
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["a.json", "b.txt", "c.bin"]


def test_generated_pngs_are_world_readable(tmp_path):
    import numpy as np

    from regl.generate.generator import save_pngs

    paths = save_pngs(np.zeros((2, 28, 28, 1), dtype=np.uint8), tmp_path / "out", "coat")
    assert [p.name for p in paths] == ["coat_00000.png", "coat_00001.png"]
    assert {stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "out").iterdir()} == {0o644}
