"""Progress: tqdm's bar on a terminal, a plain line every few percent in a log or pipe."""

import io
from pathlib import Path

from tqdm import tqdm

from regl.progress import LineProgress, progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_a_bounded_number_of_whole_lines():
    out = io.StringIO()
    bar = progress(range(300), total=300, desc="lora", unit="step", file=out)
    assert isinstance(bar, LineProgress)
    seen = []
    for step in bar:
        seen.append(step)
        bar.set_postfix(loss=f"{step / 1000:.4f}")
    text = out.getvalue()
    lines = text.splitlines()
    assert seen == list(range(300))
    assert "\r" not in text and 15 <= len(lines) <= 25
    assert lines[0].startswith("lora: 15/300 steps, ") and "left" in lines[0]
    assert lines[-1].startswith("lora: 300/300 steps, ") and "left" not in lines[-1]
    assert lines[-1].endswith("; loss 0.2990")  # the last step's postfix


def test_a_resumed_count_starts_where_it_was_and_ends_on_the_total():
    out = io.StringIO()
    with progress(total=301, initial=100, desc="generating", unit="image", file=out) as bar:
        for done in (100 + 7, 150, 151, 299, 301):  # the batch sizes of generation calls
            bar.update(done - bar.n)
    lines = out.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == [
        "generating: 107/301 images",  # past 105, the first multiple of 5% (15) after 100
        "generating: 150/301 images",
        "generating: 299/301 images",
        "generating: 301/301 images",
    ]


def test_a_terminal_keeps_the_bar():
    out = Terminal()
    bar = progress(range(50), total=50, desc="lora", unit="step", file=out)
    assert isinstance(bar, tqdm)
    for _ in bar:
        bar.set_postfix(loss="0.1")
    bar.close()
    assert "\r" in out.getvalue()


def test_disabled_writes_nothing_anywhere():
    out = io.StringIO()
    for _ in progress(range(20), total=20, desc="lora", disable=True, file=out):
        pass
    assert out.getvalue() == ""


def test_no_module_uses_tqdm_but_through_the_helper():
    root = Path(__file__).resolve().parent.parent
    users = [
        path.relative_to(root).as_posix()
        for folder in ("regl", "service", "clients")
        for path in (root / folder).rglob("*.py")
        if "tqdm" in path.read_text()
    ]
    assert users == ["regl/progress.py"]
