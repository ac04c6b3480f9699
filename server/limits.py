"""What the server process may hold: its open-file limit.

Each WebSocket session holds a descriptor; the soft limit many systems
start a process with (1,024) would cap a node far below ``max_sessions``.
"""

from __future__ import annotations

import resource
from typing import Final

import structlog

OPEN_FILES_SPARE: Final = 512
"""Descriptors kept for what is not a session: upstream and Redis
connections, the listening sockets, logs, the page's files."""
OPEN_FILES_CAP: Final = 1 << 20
"""The soft limit asked for when the hard one is unlimited."""


def raise_open_files(max_sessions: int) -> None:
    """Raise the open-file limit's soft value to the hard one (each session
    holds a descriptor), and say in one line how many sessions the limit
    allows when that is fewer than ``max_sessions``."""
    log = structlog.get_logger("tokenwire")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = OPEN_FILES_CAP if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):
            pass  # the soft limit stays; the line below says what it allows
    if soft == resource.RLIM_INFINITY:
        return
    allowed = max(0, soft - OPEN_FILES_SPARE)
    if allowed < max_sessions:
        log.warning(
            f"the open-file limit ({soft}) allows about {allowed} sessions, "
            f"fewer than max_sessions ({max_sessions})",
            hint="raise the hard limit (ulimit -Hn, systemd's LimitNOFILE=) and restart",
        )
