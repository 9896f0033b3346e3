"""lazy workflow elements: each step records what its elements are computed from

Revision ID: 0011
Revises: 0010
"""
import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("gt_workflow_step", sa.Column("fan", sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column("gt_workflow_step", "fan")
