"""Peak memory of a piece of work: the process's resident set size sampled while it runs, and
torch's exact CUDA allocator peak. Used by runs (their manifests), the benchmarks and the speed
measurements."""
from __future__ import annotations

import os
import threading

import torch


def rss_bytes() -> int:
    """The process's resident set size now, in bytes."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: fall back to the process-lifetime peak
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakMemory:
    """Context manager sampling the process's resident memory (and CUDA's peak) while it is open.

    ``peak_rss_mb`` is the highest resident set size seen (sampled every 20 ms, so it is a
    lower bound of the true peak); ``peak_cuda_mb`` is torch's exact allocator peak.
    """

    def __init__(self, device: str, interval: float = 0.02):
        self.device, self.interval = device, interval
        self.peak_rss = 0
        self._stop = threading.Event()

    def __enter__(self) -> "PeakMemory":
        self.peak_rss = rss_bytes()
        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_rss = max(self.peak_rss, rss_bytes())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_rss = max(self.peak_rss, rss_bytes())

    def summary(self) -> dict[str, float | None]:
        """Peaks in MiB."""
        cuda = torch.cuda.max_memory_allocated() / 2**20 if self.device.startswith("cuda") else None
        return {"peak_rss_mb": self.peak_rss / 2**20, "peak_cuda_mb": cuda}
