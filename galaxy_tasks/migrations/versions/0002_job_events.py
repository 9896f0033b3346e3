"""job events: where a job's events go, their sequence, the outbox mark, the runner's state

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("gt_job", schema=None) as batch_op:
        batch_op.add_column(sa.Column("events_queue", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("client_id", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("event_seq", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("unpublished_at", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("runner_state", sa.String(length=64), nullable=True))
        batch_op.create_index("ix_gt_job_unpublished_at", ["unpublished_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("gt_job", schema=None) as batch_op:
        batch_op.drop_index("ix_gt_job_unpublished_at")
        for column in ("runner_state", "unpublished_at", "event_seq", "client_id", "events_queue"):
            batch_op.drop_column(column)
