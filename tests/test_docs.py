"""The MkDocs site: it builds with --strict, and its results tables are the results folders' own."""

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NUMBER = re.compile(r"-?\d+(?:[.,]\d+)*")


def hook():
    spec = importlib.util.spec_from_file_location("results_pages", ROOT / "docs" / "hooks" / "results_pages.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def table_rows(markdown: str) -> list[str]:
    return [line for line in markdown.splitlines() if line.startswith("|")]


def folder_text(folder: Path) -> str:
    """What a results folder says in its own files: its table and its bench record."""
    text = (folder / "table.md").read_text()
    if (folder / "bench.json").is_file():
        text += json.dumps(json.loads((folder / "bench.json").read_text()))
    return text


def test_every_number_in_a_generated_results_table_comes_from_its_folder():
    pages = hook()
    folders = [folder for folder in pages.results_folders() if (folder / "table.md").is_file()]
    assert len(folders) >= 30
    for folder in folders:
        source = folder_text(folder)
        for generated in (pages.results_page(folder), pages.results_table(folder.name)):
            rows = table_rows(generated)
            assert len(rows) >= 3, folder.name  # a header, its rule and at least one row
            for number in {n for row in rows for n in NUMBER.findall(row)}:
                assert number in source, f"{number} in the page of results/{folder.name} is not in the folder"


def test_a_narrative_page_names_a_table_that_exists(tmp_path):
    pages = hook()
    with pytest.raises(ValueError, match="results/no-such-run/table.md does not exist"):
        pages.results_table("no-such-run")
    for page in (ROOT / "docs").rglob("*.md"):
        for name in pages.TABLE_MARKER.findall(page.read_text()):
            assert (ROOT / "results" / name / "table.md").is_file(), f"{page.name} shows results/{name}"


def test_a_side_by_side_table_takes_each_figure_from_the_folder_that_holds_it():
    pages = hook()
    specs = [spec for page in (ROOT / "docs").rglob("*.md") for spec in pages.COLUMNS_MARKER.findall(page.read_text())]
    assert len(specs) >= 4
    for spec in specs:
        lines = [[part.strip() for part in line.split("|")] for line in spec.strip().splitlines()]
        rows = table_rows(pages.results_columns(spec))
        assert [cell.strip() for cell in rows[0].strip("|").split("|")][1:] == [header for _, _, header in lines]
        for row in rows[2:]:
            arm, *cells = [cell.strip() for cell in row.strip("|").split("|")]
            for (name, column, _), cell in zip(lines, cells, strict=True):
                names, folder_rows = pages.table_cells(name)
                expected = next((r[names.index(column)] for r in folder_rows if r[0] == arm), "—")
                assert cell == expected, f"{arm} / {column} of results/{name}: {cell} is not {expected}"


def test_a_side_by_side_table_names_what_it_cannot_find():
    pages = hook()
    with pytest.raises(ValueError, match="results/no-such-run/table.md does not exist"):
        pages.results_columns("no-such-run | accuracy % | acc.")
    with pytest.raises(ValueError, match="results/demo/table.md has no column 'no such column'"):
        pages.results_columns("demo | no such column | acc.")
    with pytest.raises(ValueError, match="is not 'FOLDER | COLUMN | HEADER'"):
        pages.results_columns("demo | accuracy %")


def test_the_docs_build_strict(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "site" / "results" / "demo" / "index.html").is_file()
    assert "Two commands" in (tmp_path / "site" / "index.html").read_text()  # the README is the home page
    assert "regl.api.add_fill" in (tmp_path / "site" / "api" / "index.html").read_text()
