"""a job's GPUs, its own scheduler options (Galaxy's and TPV's gpus, native_specification) and
its client's output size limit

Revision ID: 0009
Revises: 0008
"""
import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("gt_job") as batch_op:
        batch_op.add_column(sa.Column("output_size_bytes", sa.BigInteger, nullable=True))
        batch_op.add_column(sa.Column("gpus", sa.Integer, nullable=True))
        batch_op.add_column(sa.Column("native_specification", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("gt_job") as batch_op:
        batch_op.drop_column("native_specification")
        batch_op.drop_column("gpus")
        batch_op.drop_column("output_size_bytes")
