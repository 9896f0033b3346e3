"""initial schema

Revision ID: 0001
Revises: (none)
"""
from alembic import op
import sqlalchemy as sa


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('gt_job',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('tool_id', sa.String(length=255), nullable=False),
    sa.Column('tool_version', sa.String(length=64), nullable=True),
    sa.Column('user', sa.String(length=255), nullable=True),
    sa.Column('command', sa.Text(), nullable=False),
    sa.Column('environment', sa.JSON(), nullable=False),
    sa.Column('inputs', sa.JSON(), nullable=False),
    sa.Column('outputs', sa.JSON(), nullable=False),
    sa.Column('cores', sa.Integer(), nullable=False),
    sa.Column('memory_mb', sa.Integer(), nullable=True),
    sa.Column('walltime_s', sa.Integer(), nullable=True),
    sa.Column('destination_hint', sa.String(length=255), nullable=True),
    sa.Column('environment_setup_file', sa.Text(), nullable=True),
    sa.Column('destination', sa.String(length=255), nullable=False),
    sa.Column('queue', sa.String(length=255), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('job_dir', sa.Text(), nullable=True),
    sa.Column('external_id', sa.String(length=255), nullable=True),
    sa.Column('owner', sa.String(length=255), nullable=True),
    sa.Column('exit_code', sa.Integer(), nullable=True),
    sa.Column('signal', sa.Integer(), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('stdout_tail', sa.Text(), nullable=True),
    sa.Column('stderr_tail', sa.Text(), nullable=True),
    sa.Column('wall_time_s', sa.Float(), nullable=True),
    sa.Column('max_rss_kb', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('queued_at', sa.DateTime(), nullable=True),
    sa.Column('running_at', sa.DateTime(), nullable=True),
    sa.Column('finished_at', sa.DateTime(), nullable=True),
    sa.Column('ended_at', sa.DateTime(), nullable=True),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.Column('check_at', sa.DateTime(), nullable=True),
    sa.Column('checks', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('gt_job', schema=None) as batch_op:
        batch_op.create_index('ix_gt_job_created_at', ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_gt_job_destination'), ['destination'], unique=False)
        batch_op.create_index('ix_gt_job_state_check_at', ['state', 'check_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_gt_job_tool_id'), ['tool_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_gt_job_user'), ['user'], unique=False)

    op.create_table('gt_lease',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('holder', sa.String(length=255), nullable=False),
    sa.Column('until', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('gt_job_state_change',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('job_id', sa.String(length=36), nullable=False),
    sa.Column('from_state', sa.String(length=16), nullable=True),
    sa.Column('to_state', sa.String(length=16), nullable=False),
    sa.Column('at', sa.DateTime(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['job_id'], ['gt_job.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('gt_job_state_change', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_gt_job_state_change_job_id'), ['job_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('gt_job_state_change', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_gt_job_state_change_job_id'))

    op.drop_table('gt_job_state_change')
    op.drop_table('gt_lease')
    with op.batch_alter_table('gt_job', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_gt_job_user'))
        batch_op.drop_index(batch_op.f('ix_gt_job_tool_id'))
        batch_op.drop_index('ix_gt_job_state_check_at')
        batch_op.drop_index(batch_op.f('ix_gt_job_destination'))
        batch_op.drop_index('ix_gt_job_created_at')

    op.drop_table('gt_job')
