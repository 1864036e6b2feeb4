"""MPPS performed procedure steps (completion when a step is COMPLETED)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07 02:20:00
"""

import sqlalchemy as sa
from alembic import op

import dicom_node.db

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "performed_steps",
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("instances", sa.JSON(), nullable=False),
        sa.Column("calling_ae_title", sa.String(length=16), nullable=False),
        sa.Column("updated_at", dicom_node.db.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("sop_instance_uid", name=op.f("pk_performed_steps")),
    )
    with op.batch_alter_table("performed_steps", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_performed_steps_study_instance_uid"),
            ["study_instance_uid"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("performed_steps", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_performed_steps_study_instance_uid"))
    op.drop_table("performed_steps")
