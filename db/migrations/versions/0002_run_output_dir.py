"""runs.output_dir: where a run writes checkpoints and its RunDirSink files, so the driver can
ingest every run of a sweep without being told each path.

Revision ID: 0002_run_output_dir
Revises: 0001_initial
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_run_output_dir"
down_revision = "0001_initial"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable ADD COLUMN needs no table copy, on SQLite either.
    op.add_column("runs", sa.Column("output_dir", sa.String(1000), nullable=True))


def downgrade() -> None:
    # ALTER TABLE DROP COLUMN (SQLite >= 3.35), not a batch table copy: dropping the old runs
    # table would cascade to every metric and eval under the enforced foreign keys
    op.drop_column("runs", "output_dir")
