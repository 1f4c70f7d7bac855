"""Tables of the experiment store (SQLAlchemy 2.0 typed ORM).

The Alembic revisions in db/migrations/versions create exactly this schema; a test compares the
migrated database with this metadata so the two cannot drift.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Stable constraint names so migrations can refer to them on every backend.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in Python, naive UTC in the column (SQLite has no time zones)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("datetimes stored in the experiment store must be timezone-aware (use UTC)")
        return value.astimezone(timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=timezone.utc)


# JSONB on PostgreSQL (indexable, compact); JSON text elsewhere.
JSONType = JSON().with_variant(JSONB(), "postgresql")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Sweep(Base):
    __tablename__ = "sweeps"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSONType)  # as submitted by the user
    created: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Run(Base):
    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # content hash of the spec
    sweep: Mapped[str] = mapped_column(ForeignKey("sweeps.name", ondelete="CASCADE"))
    spec: Mapped[dict[str, Any]] = mapped_column(JSONType)  # full resolved RunSpec
    model_family: Mapped[str] = mapped_column(String(50))
    model_size: Mapped[str] = mapped_column(String(100))
    params_total: Mapped[int] = mapped_column(BigInteger)
    params_non_embedding: Mapped[int] = mapped_column(BigInteger)
    params_core: Mapped[int | None] = mapped_column(BigInteger)
    mu_rec: Mapped[int] = mapped_column(Integer)
    mu_bwd: Mapped[int] = mapped_column(Integer)
    budget_flops: Mapped[float] = mapped_column(Float)
    flop_convention: Mapped[str] = mapped_column(String(50))
    flops_per_token: Mapped[float] = mapped_column(Float)
    tokens: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(20))  # RunStatus value
    status_step: Mapped[int | None] = mapped_column(BigInteger)
    status_at: Mapped[datetime] = mapped_column(UTCDateTime)  # orders replayed status events
    backend: Mapped[str | None] = mapped_column(String(50))
    job_id: Mapped[str | None] = mapped_column(String(200))
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    heartbeat: Mapped[datetime | None] = mapped_column(UTCDateTime)
    started: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ended: Mapped[datetime | None] = mapped_column(UTCDateTime)
    failure_kind: Mapped[str | None] = mapped_column(String(50))
    failure_message: Mapped[str | None] = mapped_column(Text)
    output_dir: Mapped[str | None] = mapped_column(String(1000))  # revision 0002
    provenance: Mapped[dict[str, Any] | None] = mapped_column(JSONType)  # revision 0003, latest (re)start
    # revision 0004: the id a run had while ids hashed the package version (its run directory's
    # files still carry it); NULL for runs recorded since
    legacy_id: Mapped[str | None] = mapped_column(String(64))
    created: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        # status views and fits select runs of one sweep, by status / by size and budget
        Index("ix_runs_sweep_status", "sweep", "status"),
        Index("ix_runs_sweep_size_budget", "sweep", "model_size", "budget_flops"),
    )


class Metric(Base):
    __tablename__ = "metrics"

    # The primary key is the idempotency key: replaying a batch inserts nothing new.
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    step: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    value: Mapped[float | None] = mapped_column(Float)  # SQLite stores NaN as NULL

    # Clustered on (run, name, step) in SQLite: histories are range scans.
    __table_args__ = ({"sqlite_with_rowid": False},)


class Eval(Base):
    __tablename__ = "evals"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    recurrence: Mapped[int] = mapped_column(Integer, primary_key=True)
    split: Mapped[str] = mapped_column(String(50), primary_key=True)
    loss: Mapped[float | None] = mapped_column(Float)
    tokens: Mapped[int] = mapped_column(BigInteger)
    created: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Fit(Base):
    __tablename__ = "fits"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(100))  # e.g. "parametric", "isoflop", "test_time"
    sweep: Mapped[str | None] = mapped_column(String(200))
    selection: Mapped[dict[str, Any]] = mapped_column(JSONType)  # which runs/rows went in
    convention: Mapped[str] = mapped_column(String(50))  # FLOP / parameter counting convention
    parameters: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    uncertainties: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    # The full FitResult as JSON text (NaN/inf kept verbatim, which JSON columns reject).
    result: Mapped[str] = mapped_column(Text)
    created: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (Index("ix_fits_kind_created", "kind", "created"),)
