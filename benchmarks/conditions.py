"""What a CPU timing measures besides the kernel, and how the runner keeps it out (equally for every competitor).

Two things on Linux can dwarf a memory-bound kernel of a few milliseconds:

- **The allocator.** glibc's malloc hands a freed block above its mmap threshold back to the kernel (munmap) and
  trims the top of the heap above its trim threshold, so a call that allocates a 25 MB output gets fresh pages
  and page-faults every one of them: forward+backward of an 8×256×56×56 channels_last layer measured 9.4 ms for
  PyTorch against 2.25 + 4.4 ms for its two halves. glibc reads ``MALLOC_MMAP_THRESHOLD_`` and
  ``MALLOC_TRIM_THRESHOLD_`` at process start, so :func:`reexec_with_malloc_settings` starts the runner again
  once with them set. The mmap threshold cannot exceed 32 MiB on 64-bit glibc (a larger value is ignored, and
  the trim setting alone then disables glibc's adaptive threshold, which makes every large allocation an mmap):
  tensors above 32 MiB still pay the page faults; the CPU suites have none.
- **Other processes.** With one thread per core, a kernel whose thread is preempted waits a whole scheduler slice
  (about 4 ms) at its barrier: such samples time the neighbour. :class:`InterferenceProbe` reads how long this
  process's threads waited on a run queue (``/proc/self/task/*/schedstat``), so the runner can retake a sample
  during which a thread waited.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

# 32 MiB: the largest mmap threshold 64-bit glibc accepts. 16 GiB: never trim the heap top during a run.
MALLOC_SETTINGS = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(16 << 30)}


def malloc_settings() -> dict[str, str | None]:
    """The malloc variables of this process's environment (None: unset, glibc's default)."""
    return {name: os.environ.get(name) for name in MALLOC_SETTINGS}


def reexec_with_malloc_settings(argv: list[str]) -> None:
    """Replace this process by ``python -m benchmarks.run argv`` with :data:`MALLOC_SETTINGS`, once.

    Does nothing off Linux, when every variable is already set (by the user, or by the first run), or when
    ``--malloc-defaults`` asks for glibc's defaults.
    """
    if platform.system() != "Linux" or "--malloc-defaults" in argv:
        return
    if all(name in os.environ for name in MALLOC_SETTINGS):
        return
    env = dict(os.environ)
    for name, value in MALLOC_SETTINGS.items():
        env.setdefault(name, value)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "benchmarks.run", *argv], env)


class InterferenceProbe:
    """Nanoseconds this process's threads have spent runnable but not running, summed over its threads.

    The difference between two readings around a timed call says whether another process took a CPU from it.
    Where the kernel does not report it (not Linux, no schedstat), ``available`` is False and readings are 0.
    """

    def __init__(self) -> None:
        self._tasks = Path("/proc/self/task")
        self.available = self._read() is not None

    def _read(self) -> int | None:
        total = 0
        try:
            tids = os.listdir(self._tasks)
        except OSError:
            return None
        for tid in tids:
            try:
                fields = (self._tasks / tid / "schedstat").read_text().split()
            except OSError:
                continue  # a thread that ended between the listing and the read
            if len(fields) < 2:
                return None
            total += int(fields[1])
        return total

    def waited_ns(self) -> int:
        """The current total (compare two readings); 0 when unavailable."""
        value = self._read() if self.available else None
        return value or 0
