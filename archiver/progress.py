"""A one-line progress bar on stderr (bytes, rate, ETA), only when stderr is a terminal.

Operations call `advance(n)` from any thread; rendering is rate-limited and happens on
the calling thread, so there is no extra thread to manage."""
from __future__ import annotations

import sys
import threading
import time
from typing import TextIO


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


class Progress:
    """No-op unless enabled; `Progress.for_terminal()` enables itself only on a TTY."""

    def __init__(self, label: str = "", total: int = 0, *, enabled: bool = False, stream: TextIO | None = None,
                 interval: float = 0.2) -> None:
        self.label, self.total, self.enabled = label, total, enabled
        self.stream = stream or sys.stderr
        self.interval = interval
        self.done = 0
        self._start = time.monotonic()
        self._last = 0.0
        self._lock = threading.Lock()

    @classmethod
    def for_terminal(cls, label: str, total: int = 0, *, quiet: bool = False) -> "Progress":
        enabled = not quiet and hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
        return cls(label, total, enabled=enabled)

    def start(self, label: str, total: int) -> None:
        with self._lock:
            self.label, self.total, self.done = label, total, 0
            self._start = time.monotonic()

    def advance(self, n: int) -> None:
        if not self.enabled:
            return
        with self._lock:
            self.done += n
            now = time.monotonic()
            # Rate-limited; the final state of a known total is always drawn. (With an
            # unknown total, `done < total` was always False: every call rendered.)
            if now - self._last < self.interval and (not self.total or self.done < self.total):
                return
            self._last = now
            self.stream.write("\r\x1b[K" + self.line(now))
            self.stream.flush()

    def line(self, now: float | None = None) -> str:
        elapsed = max((now or time.monotonic()) - self._start, 1e-9)
        rate = self.done / elapsed
        parts = [self.label, human_bytes(self.done)]
        if self.total:
            pct = min(100.0, 100.0 * self.done / self.total)
            eta = max(0.0, (self.total - self.done) / rate) if rate > 0 else 0.0
            parts[1] += f" / {human_bytes(self.total)} ({pct:.0f}%)"
            parts.append(f"ETA {int(eta // 60)}:{int(eta % 60):02d}")
        parts.insert(2, f"{human_bytes(rate)}/s")
        return "  ".join(p for p in parts if p)

    def finish(self) -> None:
        if self.enabled:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
