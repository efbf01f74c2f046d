"""MkDocs hook: the site's home from README.md, and a page for every committed `results/<name>/` folder, made
from their files at build time.

Nothing in those pages is typed by hand: the command that wrote the folder (`command.txt`), its
table (`table.md`), its figures (`*.png`), its printed reports (`*.txt`) and a list of its other
files. A narrative page shows a folder's table where it writes `<!-- results-table NAME -->`,
and a table that sets columns of several folders side by side where it writes

    <!-- results-columns
    FOLDER | COLUMN OF ITS table.md | HEADER HERE
    ...
    -->

(one row per arm, in the order the folders name them), so a figure lives once, in its results folder.
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "results"
# repository files the pages show or link to, served at the same paths
MIRRORED = (
    "models/regl-tiny-sd/MODEL_CARD.md",
    "models/regl-tiny-sd/grid-fashion-mnist.png",
    "models/regl-tiny-sd/grid-mnist-10k.png",
    "service/routes/page-screenshot.png",
)
TABLE_MARKER = re.compile(r"<!-- results-table ([\w.+-]+) -->")
COLUMNS_MARKER = re.compile(r"<!-- results-columns\n(.*?)-->", re.DOTALL)


def results_folders() -> list[Path]:
    return sorted(path for path in RESULTS.iterdir() if path.is_dir())


def table_lines(name: str) -> list[str]:
    """The lines of `results/NAME/table.md`'s table (its notes below the table left out)."""
    table = RESULTS / name / "table.md"
    if not table.is_file():
        raise ValueError(f"results/{name}/table.md does not exist")
    rows = []
    for line in table.read_text().splitlines():
        if not line.startswith("|"):
            if rows:
                break
            continue
        rows.append(line)
    return rows


def results_table(name: str) -> str:
    """`results/NAME/table.md`'s table, with the folder named under it."""
    try:
        rows = table_lines(name)
    except ValueError as error:
        raise ValueError(f"<!-- results-table {name} -->: {error}") from None
    return "\n".join(rows) + f"\n\n<small>From [results/{name}](results/{name}.md).</small>\n"


def table_cells(name: str) -> tuple[list[str], list[list[str]]]:
    """The header and rows of `results/NAME/table.md`'s table, cell by cell."""
    cells = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in table_lines(name)]
    return cells[0], cells[2:]


def results_columns(spec: str) -> str:
    """A table of arms by the named columns of several folders' tables (`—` where a folder has no such arm)."""
    headers, values, folders = ["arm"], {}, []
    for line in filter(None, (line.strip() for line in spec.splitlines())):
        parts = [part.strip() for part in line.split("|")]
        if len(parts) != 3:
            raise ValueError(f"<!-- results-columns -->: {line!r} is not 'FOLDER | COLUMN | HEADER'")
        name, column, header = parts
        try:
            names, rows = table_cells(name)
        except ValueError as error:
            raise ValueError(f"<!-- results-columns -->: {error}") from None
        if column not in names:
            raise ValueError(f"<!-- results-columns -->: results/{name}/table.md has no column {column!r}")
        index = names.index(column)
        for row in rows:
            values.setdefault(row[0], {})[len(headers)] = row[index]
        headers.append(header)
        folders += [name] if name not in folders else []
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for arm, cells in values.items():
        lines.append("| " + " | ".join([arm] + [cells.get(i, "—") for i in range(1, len(headers))]) + " |")
    sources = ", ".join(f"[results/{name}](results/{name}.md)" for name in folders)
    return "\n".join(lines) + f"\n\n<small>From {sources}.</small>\n"


def results_page(folder: Path) -> str:
    """The page of one results folder: its command, table, figures, printed reports and other files."""
    name = folder.name
    parts = [f"# {name}\n"]
    if (folder / "command.txt").is_file():
        parts.append(f"Written by:\n\n```bash\n{(folder / 'command.txt').read_text().strip()}\n```\n")
    if (folder / "table.md").is_file():
        parts.append((folder / "table.md").read_text().strip() + "\n")
    for figure in sorted(folder.glob("*.png")):
        parts.append(f"![{figure.stem}]({name}/{figure.name})\n")
    for report in sorted(folder.glob("*.txt")):
        if report.name != "command.txt":
            parts.append(f"`{report.name}`:\n\n```text\n{report.read_text().rstrip()}\n```\n")
    others = sorted(
        str(path.relative_to(folder))
        for path in folder.rglob("*")
        if path.is_file() and path.parent == folder and path.suffix not in (".png", ".txt") and path.name != "table.md"
    )
    cells = sorted(path.name for path in folder.iterdir() if path.is_dir())
    if others:
        parts.append("Other files: " + ", ".join(f"`{other}`" for other in others) + ".\n")
    if cells:
        parts.append("Runs (one folder each, with its `summary.json`, `rounds.json` and figures): "
                     + ", ".join(f"`{cell}`" for cell in cells) + ".\n")  # fmt: skip
    return "\n".join(parts)


def results_index(folders: list[Path]) -> str:
    lines = [
        "# Results",
        "",
        "Every folder under `results/`, each written by the one command its page shows; "
        "the figures name the machine in the command's comments or the runs' `config.json`.",
        "",
    ]
    for folder in folders:
        command = folder / "command.txt"
        first = next(
            (line for line in command.read_text().splitlines() if line.startswith("regl ")), ""
        ) if command.is_file() else ""  # fmt: skip
        lines.append(f"- [{folder.name}]({folder.name}.md)" + (f": `{first[:100]}`" if first else ""))
    return "\n".join(lines) + "\n"


def home_page() -> str:
    """README.md as the site's home: its links into docs/ made relative to the site."""
    return (ROOT / "README.md").read_text().replace("](docs/", "](")


def on_files(files: Files, config) -> Files:
    files.append(File.generated(config, "index.md", content=home_page()))
    for path in MIRRORED:
        if path.endswith(".md"):
            files.append(File.generated(config, path, content=(ROOT / path).read_text()))
        else:
            files.append(File.generated(config, path, abs_src_path=str(ROOT / path)))
    folders = results_folders()
    files.append(File.generated(config, "results/index.md", content=results_index(folders)))
    for folder in folders:
        files.append(File.generated(config, f"results/{folder.name}.md", content=results_page(folder)))
        for figure in sorted(folder.glob("*.png")):
            files.append(File.generated(config, f"results/{folder.name}/{figure.name}", abs_src_path=str(figure)))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    depth = page.file.src_uri.count("/")
    prefix = "../" * depth

    def table(match: re.Match) -> str:
        return results_table(match.group(1)).replace("](results/", f"]({prefix}results/")

    def columns(match: re.Match) -> str:
        return results_columns(match.group(1)).replace("](results/", f"]({prefix}results/")

    return COLUMNS_MARKER.sub(columns, TABLE_MARKER.sub(table, markdown))
