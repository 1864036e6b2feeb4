"""associations released by peers that send whole studies (completion on release)

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07 02:10:00
"""

import sqlalchemy as sa
from alembic import op

import dicom_node.db

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "released_associations",
        sa.Column("association", sa.String(length=32), nullable=False),
        sa.Column("calling_ae_title", sa.String(length=16), nullable=False),
        sa.Column("released_at", dicom_node.db.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("association", name=op.f("pk_released_associations")),
    )
    with op.batch_alter_table("released_associations", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_released_associations_released_at"), ["released_at"], unique=False
        )
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.add_column(sa.Column("association", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.drop_column("association")
    with op.batch_alter_table("released_associations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_released_associations_released_at"))
    op.drop_table("released_associations")
