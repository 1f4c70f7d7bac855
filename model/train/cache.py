"""Where prepared data is cached, and the lock that makes each cache entry built once.

Cache root: argument > $PARCAE_CACHE_DIR > ~/.cache/parcae_scaling. Entries (token files,
tokenizers) are written under a temporary name and renamed into place, so a reader never sees a
partial entry; a builder holds `file_lock` on a lock file beside the entry, so processes that
need the same entry at once (several runs of a sweep starting together, or `prepare-data` beside
a launch) build it once: the others wait, then reuse it. On NFS, Linux maps flock to POSIX locks,
which hold across nodes where the lock manager runs; where locking does not work, builders still
write separate temporary files: the worst case is duplicate work or a failed build, never a
mixed file.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator

CACHE_ENV_VAR = "PARCAE_CACHE_DIR"


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """Where tokenized corpora and tokenizers are cached."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV_VAR)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "parcae_scaling"


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created if missing) for this block, waiting for any
    other holder. The kernel releases it when the holder dies, so a killed build never leaves a
    stale lock. Lock files are never deleted: removing one while another process waits on it
    would let a third process lock a new file and build alongside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:  # append mode: never truncates what another holder sees
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        yield  # closing the file releases the lock
