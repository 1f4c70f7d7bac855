"""runs.provenance: what produced a run (code version and commit, libraries, device, host,
threads, the precision chosen; model/train/provenance.py), as of its latest (re)start.

Revision ID: 0003_run_provenance
Revises: 0002_run_output_dir
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003_run_provenance"
down_revision = "0002_run_output_dir"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable ADD COLUMN needs no table copy, on SQLite either; runs trained before have none.
    json_type = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
    op.add_column("runs", sa.Column("provenance", json_type, nullable=True))


def downgrade() -> None:
    # ALTER TABLE DROP COLUMN (SQLite >= 3.35), not a batch table copy: dropping the old runs
    # table would cascade to every metric and eval under the enforced foreign keys
    op.drop_column("runs", "provenance")
