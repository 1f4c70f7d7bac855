"""Alembic environment: migrations run only through `parcae_scaling.db.migrate` on a live connection.

The store hands its connection in `config.attributes["connection"]`, so the migration shares the
caller's transaction (and on SQLite its write lock) and never opens a second engine.
"""

from __future__ import annotations

from alembic import context

from parcae_scaling.db.schema import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "parcae-scaling migrations run through parcae_scaling.db.Store.open(url) "
        "(or parcae_scaling.db.migrate.upgrade), not the alembic command line"
    )

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite ALTER goes through table copies
)
context.run_migrations()
