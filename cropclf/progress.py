"""A small progress bar for data passes (Keras draws its own during `fit`)."""

from __future__ import annotations

import sys
import time


class Progress:
    """Prints ``label [=====>    ] 120/240  3.1s`` to stderr, redrawn in place on a terminal.

    Off a terminal (CI logs) it prints a line at every 25% instead of redrawing.
    """

    def __init__(self, total: int, label: str, enabled: bool = True, stream=None):
        self.total, self.label, self.enabled = max(int(total), 0), label, enabled and total > 0
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.done, self.start, self._last_quarter, self._last_draw = 0, time.perf_counter(), -1, 0.0

    def update(self, n: int = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        now = time.perf_counter()
        if self.tty:
            if now - self._last_draw > 0.1 or self.done >= self.total:
                self._last_draw = now
                self.stream.write("\r" + self._line(now))
                self.stream.flush()
        else:
            quarter = 4 * self.done // self.total
            if quarter > self._last_quarter:
                self._last_quarter = quarter
                self.stream.write(self._line(now) + "\n")
                self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()

    def _line(self, now: float) -> str:
        frac = min(self.done / self.total, 1.0)
        bar = ("=" * int(30 * frac))[:-1] + ">" if frac < 1 else "=" * 30
        return f"{self.label} [{bar:<30}] {self.done}/{self.total}  {now - self.start:.1f}s"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
