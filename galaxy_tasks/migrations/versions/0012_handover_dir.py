"""a client's directory a job run as its user is given with its own (Galaxy's job directory)

Revision ID: 0012
Revises: 0011
"""
import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("gt_job") as batch_op:
        batch_op.add_column(sa.Column("handover_dir", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("gt_job") as batch_op:
        batch_op.drop_column("handover_dir")
