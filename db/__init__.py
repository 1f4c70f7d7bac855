"""The experiment store: schema, migrations, the Store API and the sinks workers write through."""

from parcae_scaling.db.engine import DEFAULT_URL, STORE_ENV, default_url
from parcae_scaling.db.errors import (
    NoStoreError, SchemaError, StoreError, StoreUnavailableError, Superseded, UnknownRunError,
    UnknownSweepError, UnsafeFilesystemError,
)
from parcae_scaling.db.files import RunDirSink, read_run_dir
from parcae_scaling.db.records import IngestReport, RunRecord
from parcae_scaling.model.contracts import EvalRow, MetricsSink, RunStatus
from parcae_scaling.db.store import Store
from parcae_scaling.db.store_sink import StoreSink

__all__ = [
    "DEFAULT_URL", "EvalRow", "IngestReport", "MetricsSink", "NoStoreError", "RunDirSink", "RunRecord", "RunStatus",
    "SchemaError", "Store", "StoreError", "StoreSink", "StoreUnavailableError", "Superseded", "UnknownRunError",
    "UnknownSweepError", "UnsafeFilesystemError", "STORE_ENV", "default_url", "read_run_dir",
]
