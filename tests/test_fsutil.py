"""Writes that never leave a moment without an output."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from ptblm.fsutil import atomic_dir


def test_replacing_a_folder_never_leaves_it_missing(tmp_path: Path) -> None:
    """An observer polls the folder while it is replaced 30 times; each old folder holds 500
    files, so deleting it before the new one is in place would be seen."""
    target = tmp_path / "prepared"
    gaps = 0
    stop = threading.Event()

    def observe() -> None:
        nonlocal gaps
        while not stop.is_set():
            if not os.path.isdir(target):
                gaps += 1

    for generation in range(31):
        if generation == 1:
            watcher = threading.Thread(target=observe)
            watcher.start()
        with atomic_dir(target) as tmp:
            for i in range(500):
                (tmp / f"{i}.txt").write_text(str(generation))
    stop.set()
    watcher.join()
    assert gaps == 0
    assert (target / "0.txt").read_text() == "30"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]  # nothing left beside it


def test_a_failed_block_keeps_the_old_folder(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("old")
    try:
        with atomic_dir(target) as tmp:
            (tmp / "a").write_text("half")
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    assert (target / "a").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
