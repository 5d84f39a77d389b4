"""Render benchmark rows as an aligned text table (terminal) or a markdown table."""
from __future__ import annotations

from typing import Any, Sequence

COLUMNS = [
    ("op", "operation"),
    ("tool", "tool"),
    ("wall", "wall s"),
    ("wall_sync", "+sync s"),
    ("cpu", "CPU s"),
    ("mbps", "MB/s"),
    ("rss", "peak RSS MiB"),
    ("stored", "stored bytes"),
    ("vs", "ours vs this"),
    ("target", "target"),
    ("status", "result"),
]


def fmt_num(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return str(v)


def cells(row: dict[str, Any]) -> list[str]:
    out = []
    for key, _ in COLUMNS:
        v = row.get(key)
        if key in ("wall", "cpu", "wall_sync"):
            out.append(fmt_num(v, 2))
        elif key in ("mbps", "rss"):
            out.append(fmt_num(v, 0 if key == "mbps" else 1))
        elif key == "stored":
            s = fmt_num(v)
            if row.get("stored_note"):
                s += f" ({row['stored_note']})"
            out.append(s)
        else:
            out.append("" if v is None else str(v))
    return out


def text_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]] | None = None,
               render=None) -> str:
    columns = columns or COLUMNS
    render = render or cells
    head = [title for _, title in columns]
    body = [render(r) for r in rows]
    widths = [max(len(head[i]), *(len(b[i]) for b in body)) if body else len(head[i]) for i in range(len(head))]
    right = [h.startswith(("wall", "+sync", "CPU", "MB/s", "peak RSS", "stored", "RSS ")) for h in head]

    def line(vals: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if right[i] else v.ljust(w)
                         for i, (v, w) in enumerate(zip(vals, widths))).rstrip()

    out = [line(head), line(["-" * w for w in widths])]
    prev_op = None
    for r, b in zip(rows, body):
        if prev_op is not None and r.get("op") != prev_op:
            out.append("")
        prev_op = r.get("op")
        out.append(line(b))
    return "\n".join(out)


def md_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]] | None = None,
             render=None) -> str:
    columns = columns or COLUMNS
    render = render or cells
    head = [title for _, title in columns]
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        vals = [v.replace("|", "\\|") for v in render(r)]
        if r.get("status") in ("PASS", "FAIL"):
            vals[-1] = f"**{vals[-1]}**"
        out.append("| " + " | ".join(vals) + " |")
    return "\n".join(out)


MEM_COLUMNS = [
    ("op", "operation"),
    ("small_wall", "wall s (small)"),
    ("small_rss", "peak RSS MiB (small)"),
    ("large_wall", "wall s (large)"),
    ("large_mbps", "MB/s (large)"),
    ("large_rss", "peak RSS MiB (large)"),
    ("ratio", "RSS large/small"),
    ("target", "target"),
    ("status", "result"),
]


def mem_cells(row: dict[str, Any]) -> list[str]:
    out = []
    for key, _ in MEM_COLUMNS:
        v = row.get(key)
        if key.endswith("wall"):
            out.append(fmt_num(v, 2))
        elif key.endswith("rss"):
            out.append(fmt_num(v, 1))
        elif key.endswith("mbps"):
            out.append(fmt_num(v, 0))
        elif key == "ratio":
            out.append("-" if v is None else f"{v:.3f}x")
        else:
            out.append("" if v is None else str(v))
    return out
