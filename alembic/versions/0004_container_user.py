"""container user: the uid, gid and groups ContainerStatus reports

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 10:07:45.493277
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ALTER TABLE (no batch copy): the views that read container stay valid.
    op.add_column("container", sa.Column("uid", sa.Integer(), nullable=True))
    op.add_column("container", sa.Column("gid", sa.Integer(), nullable=True))
    op.add_column(
        "container",
        sa.Column("supplemental_groups", sa.Text(), server_default="[]", nullable=False),
    )


def downgrade() -> None:
    for column in ("supplemental_groups", "gid", "uid"):
        op.execute(f"ALTER TABLE container DROP COLUMN {column}")  # SQLite >= 3.35
