"""a destination's line: indexes on (destination, state, user, created_at) for fair share and
on (destination, finished_at) for its recent run times

Revision ID: 0007
Revises: 0006
"""
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_gt_job_line", "gt_job", ["destination", "state", "user", "created_at"], unique=False)
    op.create_index("ix_gt_job_destination_finished_at", "gt_job", ["destination", "finished_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_gt_job_destination_finished_at", table_name="gt_job")
    op.drop_index("ix_gt_job_line", table_name="gt_job")
