"""Initial experiment-store schema: sweeps, runs, metrics, evals, fits.

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None

# Frozen copy of the types at this revision (never import the live schema into a migration).
JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "sweeps",
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("spec", JSONType, nullable=False),
        sa.Column("created", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_sweeps"),
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("sweep", sa.String(200), nullable=False),
        sa.Column("spec", JSONType, nullable=False),
        sa.Column("model_family", sa.String(50), nullable=False),
        sa.Column("model_size", sa.String(100), nullable=False),
        sa.Column("params_total", sa.BigInteger(), nullable=False),
        sa.Column("params_non_embedding", sa.BigInteger(), nullable=False),
        sa.Column("params_core", sa.BigInteger(), nullable=True),
        sa.Column("mu_rec", sa.Integer(), nullable=False),
        sa.Column("mu_bwd", sa.Integer(), nullable=False),
        sa.Column("budget_flops", sa.Float(), nullable=False),
        sa.Column("flop_convention", sa.String(50), nullable=False),
        sa.Column("flops_per_token", sa.Float(), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("status_step", sa.BigInteger(), nullable=True),
        sa.Column("status_at", sa.DateTime(), nullable=False),
        sa.Column("backend", sa.String(50), nullable=True),
        sa.Column("job_id", sa.String(200), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("heartbeat", sa.DateTime(), nullable=True),
        sa.Column("started", sa.DateTime(), nullable=True),
        sa.Column("ended", sa.DateTime(), nullable=True),
        sa.Column("failure_kind", sa.String(50), nullable=True),
        sa.Column("failure_message", sa.Text(), nullable=True),
        sa.Column("created", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["sweep"], ["sweeps.name"], name="fk_runs_sweep_sweeps", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_runs"),
    )
    op.create_index("ix_runs_sweep_status", "runs", ["sweep", "status"])
    op.create_index("ix_runs_sweep_size_budget", "runs", ["sweep", "model_size", "budget_flops"])
    op.create_table(
        "metrics",
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("step", sa.BigInteger(), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name="fk_metrics_run_id_runs", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("run_id", "name", "step", name="pk_metrics"),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "evals",
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("recurrence", sa.Integer(), nullable=False),
        sa.Column("split", sa.String(50), nullable=False),
        sa.Column("loss", sa.Float(), nullable=True),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.Column("created", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name="fk_evals_run_id_runs", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("run_id", "recurrence", "split", name="pk_evals"),
    )
    op.create_table(
        "fits",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(100), nullable=False),
        sa.Column("sweep", sa.String(200), nullable=True),
        sa.Column("selection", JSONType, nullable=False),
        sa.Column("convention", sa.String(50), nullable=False),
        sa.Column("parameters", JSONType, nullable=True),
        sa.Column("uncertainties", JSONType, nullable=True),
        sa.Column("result", sa.Text(), nullable=False),
        sa.Column("created", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_fits"),
    )
    op.create_index("ix_fits_kind_created", "fits", ["kind", "created"])


def downgrade() -> None:
    op.drop_index("ix_fits_kind_created", table_name="fits")
    op.drop_table("fits")
    op.drop_table("evals")
    op.drop_table("metrics")
    op.drop_index("ix_runs_sweep_size_budget", table_name="runs")
    op.drop_index("ix_runs_sweep_status", table_name="runs")
    op.drop_table("runs")
    op.drop_table("sweeps")
