"""pod sandbox network_released: Remove after Stop needs no second CNI DEL

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 09:31:31.024624
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ALTER TABLE (no batch copy): the views that read pod_sandbox stay valid.
    op.add_column(
        "pod_sandbox",
        sa.Column("network_released", sa.Boolean(), server_default=sa.text("0"), nullable=False),
    )


def downgrade() -> None:
    op.execute("ALTER TABLE pod_sandbox DROP COLUMN network_released")  # SQLite >= 3.35
