"""The resident memory a piece of work adds, sampled while it runs (Linux's /proc/self/statm).

    with RSSPeak() as m:
        work()
    m.before, m.peak, m.added      # GiB: RSS before, highest RSS during, their difference

`ru_maxrss` keeps the process's highest RSS ever, so a model's loading peak would hide what the
work itself needs; this samples the current RSS every few milliseconds instead.
"""

from __future__ import annotations

import os
import threading

_PAGE = os.sysconf("SC_PAGE_SIZE")


def current_rss() -> float:
    """This process's resident set now, GiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE / 2**30


class RSSPeak:
    def __init__(self, every_s: float = 0.005):
        self.every_s = every_s
        self._stop = threading.Event()

    def __enter__(self) -> "RSSPeak":
        self.before = self.peak = current_rss()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(self.every_s):
            self.peak = max(self.peak, current_rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, current_rss())

    @property
    def added(self) -> float:
        return self.peak - self.before
