"""seen messages: the ids of signed messages taken, each until its message expires

Revision ID: 0010
Revises: 0009
"""
import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "gt_seen_message",
        sa.Column("message_id", sa.String(length=64), nullable=False),
        sa.Column("kept_until", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("message_id"),
    )
    op.create_index("ix_gt_seen_message_kept_until", "gt_seen_message", ["kept_until"])


def downgrade() -> None:
    op.drop_index("ix_gt_seen_message_kept_until", table_name="gt_seen_message")
    op.drop_table("gt_seen_message")
