"""Files written so that a reader never sees half of one: a temporary sibling, then a rename."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any


def write_json_atomically(path: Path, payload: Any) -> None:
    """Write to a temporary file beside `path`, then rename, so readers never see half a file."""
    write_text_atomically(path, json.dumps(_finite(payload), indent=2))


def write_text_atomically(path: Path, text: str) -> None:
    write_bytes_atomically(path, text.encode())


def write_bytes_atomically(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as tmp:
        try:
            tmp.write(content)
            tmp.close()
            os.chmod(tmp.name, 0o644)  # a temporary file is private; a results file is not
            os.replace(tmp.name, path)
        except BaseException:  # a full disk, or a stop (SIGTERM, Ctrl-C): no stray temporary file
            Path(tmp.name).unlink(missing_ok=True)  # missing: the stop came just after the rename
            raise


def _finite(value: Any) -> Any:
    """JSON has no inf/NaN: write them as strings a reader can still parse with float()."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
