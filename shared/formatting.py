"""How numbers read wherever they are printed: counts with their 95% interval, and sizes on disk."""
from __future__ import annotations

import math
from typing import Optional, Sequence


def percent(value, digits: int = 1) -> str:
    """0.9 -> '90.0%'; None or NaN -> '—'."""
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}%}"


def count_text(k: int, n: int, ci: Optional[Sequence[float]] = None, markdown: bool = False) -> str:
    """'9/10 = 90.0% (95% CI 59.6%-98.2%)' on a terminal; '9/10 = 90.0% (59.6%–98.2%)' in a table whose header
    already says 95% CI. Without `ci`, just the count and its fraction."""
    text = f"{k}/{n} = {percent(k / n if n else None)}"
    if ci:
        low, high = percent(ci[0]), percent(ci[1])
        text += f" ({low}–{high})" if markdown else f" (95% CI {low}-{high})"
    return text


def size_text(num_bytes, kb_digits: int = 0, mb_digits: int = 2, mb_from: int = 1 << 20) -> str:
    """Bytes -> '201 KB' or '2.40 MB' (binary units, as `ls -h`); None -> '—'."""
    if num_bytes is None:
        return "—"
    if num_bytes >= mb_from:
        return f"{num_bytes / (1 << 20):.{mb_digits}f} MB"
    return f"{num_bytes / 1024:.{kb_digits}f} KB"
