"""Small helpers shared by the evaluation reports: Markdown tables and number formatting."""

from __future__ import annotations

from collections.abc import Sequence


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table; the first column is left-aligned, the rest right."""
    align = [":---"] + ["---:"] * (len(header) - 1)
    lines = [_row(header), _row(align), *(_row(row) for row in rows)]
    return "\n".join(lines)


def fmt(value: float | None, digits: int = 3) -> str:
    """A number with `digits` decimals, or "-" for a missing value."""
    return "-" if value is None else f"{value:.{digits}f}"


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"
