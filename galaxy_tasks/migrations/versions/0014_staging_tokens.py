"""the http staging transfer's tokens of a job, minted at prepare

Revision ID: 0014
Revises: 0013
"""
import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("gt_job") as batch_op:
        batch_op.add_column(sa.Column("staging_tokens", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("gt_job") as batch_op:
        batch_op.drop_column("staging_tokens")
