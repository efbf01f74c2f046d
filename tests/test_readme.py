"""The README's headline table: every figure in it is in the results folders its row names."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIGURE = re.compile(r"\d+\.\d+ ± \d+\.\d+")


def headline_rows() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    table = text.split("## ReGL against the strongest alternatives", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[1:]]


def test_every_headline_figure_is_in_the_folders_its_row_names():
    rows = headline_rows()
    assert len(rows) >= 4
    for cells in rows:
        folders = re.findall(r"`([\w.+-]+)`", cells[-1])
        assert folders, cells
        tables = "".join((ROOT / "results" / folder / "table.md").read_text() for folder in folders)
        figures = [figure for cell in cells[1:-1] for figure in FIGURE.findall(cell)]
        assert figures, cells
        for figure in figures:
            assert figure in tables, f"{cells[0]}: {figure} is not in {', '.join(folders)}"


def test_the_readme_stays_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 300
