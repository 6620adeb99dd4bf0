"""Who did it: the person at the keyboard, as the audit log records CLI actions."""

from __future__ import annotations

import getpass
import socket

__all__ = ["operator"]


def operator() -> str:
    """`user@host` of this process: the OS user (or `operator` where there is no user entry, as in
    some containers) and the host name, so a record says which account on which machine acted."""
    try:
        user = getpass.getuser()
    except Exception:  # no user database entry and no LOGNAME/USER: still name the action
        user = "operator"
    return f"{user}@{socket.gethostname() or 'localhost'}"
