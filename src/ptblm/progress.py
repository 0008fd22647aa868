"""Progress on long work: a bar with ETA on a terminal; without one (nohup, CI, `dvc queue`),
a plain flushed line every PROGRESS_EVERY_S, so a log shows the work going on."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

PROGRESS_EVERY_S = 60.0


def say(line: str) -> None:
    """One line of the log on stdout, out at once: above the progress bars on a terminal,
    flushed when stdout is a file or pipe (Python block-buffers those, so a log under nohup
    or a queue would otherwise show nothing until the process ends)."""
    tqdm.write(line, file=sys.stdout)
    sys.stdout.flush()


class Progress:
    """`update()` once per unit of `total`; `close()` at the end."""

    def __init__(self, total: int, desc: str, unit: str = "step"):
        self.bar = tqdm(
            total=total, desc=desc, unit=unit, leave=False, mininterval=1.0, disable=None
        )
        self.total, self.desc, self.done = total, desc, 0
        self.start = self.said = time.perf_counter()

    def update(self) -> None:
        self.done += 1
        self.bar.update(1)
        now = time.perf_counter()
        if self.bar.disable and self.done < self.total and now - self.said >= PROGRESS_EVERY_S:
            self.said = now
            eta = (now - self.start) / self.done * (self.total - self.done)
            say(
                f"  {self.desc}: {self.done}/{self.total} ({100 * self.done / self.total:.0f}%), "
                f"{now - self.start:.0f} s, ETA {eta:.0f} s"
            )

    def close(self) -> None:
        self.bar.close()
