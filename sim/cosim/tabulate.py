"""The printed summaries' table: a title, rows of (label, value), rules above and below."""

from __future__ import annotations

__all__ = ["format_rows"]


def format_rows(title: str, rows: list[tuple[str, object]], pad: int = 16) -> list[str]:
    """``title`` over a two-column table of ``rows``, the labels left-aligned."""
    w = max(len(k) for k, _ in rows)
    rule = "-" * (w + pad)
    return ["", title, rule, *(f"{k:<{w}}  {v}" for k, v in rows), rule]
