"""Numbers for people (used by the CLI and by messages of lower layers alike)."""

from __future__ import annotations


def human_bytes(n: int | None) -> str:
    """1536 → "1.5 KiB"; None or a negative size (unknown) → "-"."""
    if n is None or n < 0:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
