"""pod sandbox cni_config: the network configuration a pod was added with, for its CHECK and DEL

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04 14:10:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ALTER TABLE (no batch copy): the views that read pod_sandbox stay valid. Rows from
    # before have none: their pods are checked and released with the config dir's network.
    op.add_column("pod_sandbox", sa.Column("cni_config", sa.Text(), nullable=True))


def downgrade() -> None:
    op.execute("ALTER TABLE pod_sandbox DROP COLUMN cni_config")  # SQLite >= 3.35
