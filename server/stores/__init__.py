"""Resume stores: where a session's frames, record and kept responses live.

``contract.py`` is the contract every store keeps; ``open_store`` builds the
one the config names (``resume: off | memory | redis``). A new store is a
module here implementing ``ResumeStore`` and ``Keeper``, a line in
``open_store``, and its name in ``tests/stores/test_contract.py``'s list.
"""

from __future__ import annotations

from ..config import ServerSettings
from ..metrics import Metrics
from .contract import Keeper, KeptResponse, Record, Replay, ResponseStore, ResumeStore
from .memory import MemoryStore, NoStore
from .redis_store import RedisStore

__all__ = [
    "Keeper",
    "KeptResponse",
    "MemoryStore",
    "NoStore",
    "Record",
    "RedisStore",
    "Replay",
    "ResponseStore",
    "ResumeStore",
    "open_store",
]


def open_store(settings: ServerSettings, metrics: Metrics) -> ResumeStore:
    """The store ``settings.resume`` names (not yet started: ``start``)."""
    if settings.resume == "redis":
        return RedisStore(settings.redis_url or "", settings, metrics)
    if settings.resume == "memory":
        return MemoryStore(settings, metrics)
    return NoStore(settings, metrics)
