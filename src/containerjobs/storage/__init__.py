"""Job stores: the `Storage` protocol and the backends that ship with containerjobs."""

from ._base import Storage as Storage
from ._base import StoredLine as StoredLine
from ._memory import InMemoryStorage as InMemoryStorage
from ._sqlite import SQLiteStorage as SQLiteStorage

__all__ = ["InMemoryStorage", "SQLiteStorage", "Storage", "StoredLine"]
