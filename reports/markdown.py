"""Markdown cells and tables for the reports (pandas' ``to_markdown`` needs tabulate, which we do not depend on)."""
from __future__ import annotations

import math

import pandas as pd


def fmt(value: object) -> str:
    """Compact cell text: 4 significant digits, thousands without exponent, blank for missing."""
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return "" if value is None or value is pd.NA else str(value)


def count(n: int, noun: str) -> str:
    """``n`` and ``noun``, plural unless ``n`` is 1: ``count(1, "run")`` -> "1 run",
    ``count(3, "seed")`` -> "3 seeds"."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub Markdown table of ``df`` (cells through :func:`fmt`, ``|`` escaped)."""
    cells = [[fmt(v).replace("|", "\\|") for v in row] for row in df.itertuples(index=False)]
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])
