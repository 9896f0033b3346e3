"""the Unix user a job runs as (jobs as the real user)

Revision ID: 0008
Revises: 0007
"""
import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("gt_job") as batch_op:
        batch_op.add_column(sa.Column("run_as", sa.String(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("gt_job") as batch_op:
        batch_op.drop_column("run_as")
