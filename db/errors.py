"""The store's short exception hierarchy.

Every store error is a `RuntimeError` (like the backends' `BackendError`): a failed operation
whose message names the store and the fix. The CLI turns each into one `error:` line.
"""

from __future__ import annotations

from parcae_scaling.model.contracts import FailureKind


class StoreError(RuntimeError):
    """Base class: the store could not do what was asked; the message says how to fix it."""


class SchemaError(StoreError):
    """The database was written by another version of parcae-scaling or by another program."""


class UnsafeFilesystemError(StoreError):
    """An SQLite file on a network file system, where its locking is unreliable."""


class NoStoreError(StoreError):
    """A command that only reads or updates a store was pointed at a place that holds none."""


class StoreUnavailableError(StoreError):
    """The store cannot be reached right now (server down, connection lost, lock held too long).
    Transient: a writer may retry; a run that gives up is lost to its node, hence resumable."""

    failure_kind = FailureKind.NODE_LOST.value  # read by the worker's classify(): resume re-dispatches the run


class Superseded(BaseException):
    """A fenced write (`if_attempt=`) of an attempt that is no longer the run's current one (the
    run was claimed again): refused, and its writer must stop. A BaseException, so no
    `except Exception` in the training loop swallows it."""


class UnknownSweepError(StoreError, ValueError):
    """A sweep name the store has not recorded (a typo, or the wrong store)."""


class UnknownRunError(StoreError, KeyError):
    """Rows were written for a run id the store has not recorded."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""
