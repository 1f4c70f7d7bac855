"""The store's short exception hierarchy."""

from __future__ import annotations


class StoreError(Exception):
    """Base class: the store could not do what was asked; the message says how to fix it."""


class SchemaError(StoreError):
    """The database was written by another version of parcae-scaling or by another program."""


class UnsafeFilesystemError(StoreError):
    """An SQLite file on a network file system, where its locking is unreliable."""


class UnknownRunError(StoreError, KeyError):
    """Rows were written for a run id the store has not recorded."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""
