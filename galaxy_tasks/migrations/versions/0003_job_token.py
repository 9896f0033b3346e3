"""job token: a job directory is this row's only if it carries the row's token

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("gt_job", schema=None) as batch_op:
        batch_op.add_column(sa.Column("token", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("gt_job", schema=None) as batch_op:
        batch_op.drop_column("token")
