"""Private files: rtem's data directory is 0700 and its SQLite files 0600.

rtem.db holds token hashes, the audit log and the ledger; checkpoints.db holds incident state. Another
user on the machine has no business reading them. SQLite creates a database's -wal and -shm files with
the database's own mode, so making the database 0600 before SQLite first opens it covers them; files
left 0644 by an older rtem are tightened when they are next opened. A process-wide umask would do the
same but also change the mode of everything else the process writes (reports, exports), so it is not used.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

__all__ = ["DIR_MODE", "FILE_MODE", "SQLITE_SIBLINGS", "private_data_dir", "private_dir", "private_file"]

log = logging.getLogger(__name__)

DIR_MODE = 0o700
FILE_MODE = 0o600
SQLITE_SIBLINGS = ("-wal", "-shm", "-journal")
def private_data_dir(path: str | Path, files: tuple[str, ...] = ("rtem.db", "checkpoints.db")) -> Path:
    """The data directory, 0700, with `files` (the SQLite files `agent.service.build` opens in it)
    created (when missing) or tightened to 0600."""
    directory = private_dir(path)
    for name in files:
        private_file(directory / name)
    return directory


def private_dir(path: str | Path) -> Path:
    """Create `path` (and missing parents) as 0700, or make an existing directory of ours 0700."""
    path = Path(path)
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    _tighten(path, DIR_MODE)
    return path


def private_file(path: str | Path) -> Path:
    """Create the SQLite file `path` empty and 0600 if missing (an empty file is an empty database), or
    tighten it and its -wal, -shm and -journal files to 0600. Its directory must exist."""
    path = Path(path)
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE))
    except FileExistsError:  # opening an existing file needs no write access here: SQLite decides
        pass
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: its directory {path.parent} does not exist") from None
    for candidate in (path, *(path.with_name(path.name + suffix) for suffix in SQLITE_SIBLINGS)):
        if candidate.exists():
            _tighten(candidate, FILE_MODE)
    return path


def _tighten(path: Path, mode: int) -> None:
    """chmod `path` to `mode` when it is looser and ours; someone else's file is left alone, with a warning."""
    if os.name != "posix":
        return
    try:
        info = path.stat()
    except FileNotFoundError:  # a -wal or -shm SQLite removed meanwhile
        return
    if stat.S_IMODE(info.st_mode) & ~mode == 0:
        return
    if info.st_uid != os.getuid():
        log.warning("%s is mode %o and belongs to uid %d, not us: left as it is; make it %o", path,
                    stat.S_IMODE(info.st_mode), info.st_uid, mode)
        return
    os.chmod(path, mode)
