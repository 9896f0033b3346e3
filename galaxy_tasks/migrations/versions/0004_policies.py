"""policies: attempts, concurrency-limit places and the usage of each limit key

Revision ID: 0004
Revises: 0003
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("gt_job", schema=None) as batch_op:
        batch_op.add_column(sa.Column("attempt", sa.Integer(), nullable=False, server_default="1"))
        batch_op.add_column(sa.Column("attempts", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("limit_keys", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("waiting_on", sa.String(length=255), nullable=True))
        batch_op.create_index("ix_gt_job_waiting", ["state", "waiting_on", "created_at"], unique=False)
    op.create_table(
        "gt_limit_usage",
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("used", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )


def downgrade() -> None:
    op.drop_table("gt_limit_usage")
    with op.batch_alter_table("gt_job", schema=None) as batch_op:
        batch_op.drop_index("ix_gt_job_waiting")
        for column in ("waiting_on", "limit_keys", "attempts", "attempt"):
            batch_op.drop_column(column)
