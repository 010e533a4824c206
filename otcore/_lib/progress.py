"""A progress bar: ``tqdm`` when installed, otherwise a light one on stderr."""

from __future__ import annotations

import sys
import time


class _Plain:
    def __init__(self, total, desc):
        self.total, self.desc, self.n = total, desc, 0
        self.t0 = self.last = time.perf_counter()
        self.postfix = ""

    def update(self, k=1):
        self.n += k
        now = time.perf_counter()
        if now - self.last > 0.5 or self.n == self.total:
            self.last = now
            rate = self.n / max(now - self.t0, 1e-9)
            sys.stderr.write(
                f"\r{self.desc}: {self.n}/{self.total} [{rate:.1f} it/s] {self.postfix}"
            )
            sys.stderr.flush()

    def set_postfix_str(self, s):
        self.postfix = s

    def close(self):
        sys.stderr.write("\n")
        sys.stderr.flush()


class _Null:
    def update(self, k=1):
        pass

    def set_postfix_str(self, s):
        pass

    def close(self):
        pass


def progress(total: int, desc: str, enabled: bool):
    """A bar with ``update``, ``set_postfix_str`` and ``close``."""
    if not enabled:
        return _Null()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _Plain(total, desc)
    return tqdm(total=total, desc=desc)
