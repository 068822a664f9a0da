"""What the policy files look like on disk now: one job, the standard library only.

`file_state(directories)` maps every policy or catalog file in the directories (not their
subdirectories) to its size and modification time in nanoseconds. Two equal states taken
a quiet window apart mean no file changed in between (as far as the file system can say:
a writer that pauses longer than the window can still show a finished-looking prefix,
which is why renaming a complete file over the old one is the only fully safe save).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

WATCHED_SUFFIXES = (".policy", ".yaml", ".yml", ".json")

FileState = dict[str, tuple[int, int]]


def file_state(directories: Iterable[Path]) -> FileState:
    """path -> (size, mtime_ns) of every watched file in `directories`."""
    state: FileState = {}
    for directory in directories:
        try:
            entries = list(os.scandir(directory))
        except OSError:  # a directory being replaced: nothing to say about it now
            continue
        for entry in entries:
            if not entry.name.endswith(WATCHED_SUFFIXES):
                continue
            try:
                stat = entry.stat()
            except OSError:  # deleted between the listing and the stat
                continue
            state[entry.path] = (stat.st_size, stat.st_mtime_ns)
    return state
