"""what a job on a destination without a shared filesystem sends home and rewrites

Revision ID: 0013
Revises: 0012
"""
import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("gt_job") as batch_op:
        batch_op.add_column(sa.Column("returns", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("rewrite", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("gt_job") as batch_op:
        batch_op.drop_column("rewrite")
        batch_op.drop_column("returns")
