"""workflows: a workflow, its history, its steps and their elements; a job's workflow;
provenance: reuse allowed, the provenance key, the outputs' sizes and hashes, reused from

Revision ID: 0005
Revises: 0004
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "gt_workflow",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("user", sa.String(length=255), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("document", sa.JSON(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("check_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_gt_workflow_state_check_at", "gt_workflow", ["state", "check_at"], unique=False)
    op.create_index("ix_gt_workflow_created_at", "gt_workflow", ["created_at"], unique=False)
    op.create_table(
        "gt_workflow_state_change",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("workflow_id", sa.String(length=36), nullable=False),
        sa.Column("from_state", sa.String(length=16), nullable=True),
        sa.Column("to_state", sa.String(length=16), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["workflow_id"], ["gt_workflow.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_gt_workflow_state_change_workflow_id", "gt_workflow_state_change", ["workflow_id"])
    op.create_table(
        "gt_workflow_step",
        sa.Column("workflow_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("elements", sa.Integer(), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("needs", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["workflow_id"], ["gt_workflow.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("workflow_id", "name"),
    )
    op.create_table(
        "gt_workflow_element",
        sa.Column("workflow_id", sa.String(length=36), nullable=False),
        sa.Column("step", sa.String(length=64), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("run", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(["workflow_id"], ["gt_workflow.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("workflow_id", "step", "index"),
    )
    op.create_index("ix_gt_workflow_element_job_id", "gt_workflow_element", ["job_id"], unique=True)
    with op.batch_alter_table("gt_job", schema=None) as batch_op:
        batch_op.add_column(sa.Column("workflow_id", sa.String(length=36), nullable=True))
        batch_op.create_index("ix_gt_job_workflow_id", ["workflow_id", "state"], unique=False)
        batch_op.add_column(sa.Column("reuse", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column("provenance", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("output_files", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("reused_from", sa.String(length=36), nullable=True))
        batch_op.create_index("ix_gt_job_provenance", ["provenance"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("gt_job", schema=None) as batch_op:
        batch_op.drop_index("ix_gt_job_provenance")
        for column in ("reused_from", "output_files", "provenance", "reuse"):
            batch_op.drop_column(column)
        batch_op.drop_index("ix_gt_job_workflow_id")
        batch_op.drop_column("workflow_id")
    op.drop_table("gt_workflow_element")
    op.drop_table("gt_workflow_step")
    op.drop_table("gt_workflow_state_change")
    op.drop_table("gt_workflow")
