"""Alembic environment: the URL comes from the caller (galaxy_tasks.schema), never a file."""
from alembic import context

from galaxy_tasks.model import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
