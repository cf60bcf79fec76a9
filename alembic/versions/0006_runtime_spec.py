"""container and pod sandbox runtime_spec: the OCI spec crictld gave containerd's record

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 06:20:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ALTER TABLE (no batch copy): the views stay valid. Rows from before hold none:
    # their spec is read from containerd's record.
    op.add_column("container", sa.Column("runtime_spec", sa.Text(), nullable=True))
    op.add_column("pod_sandbox", sa.Column("runtime_spec", sa.Text(), nullable=True))


def downgrade() -> None:
    op.execute("ALTER TABLE container DROP COLUMN runtime_spec")  # SQLite >= 3.35
    op.execute("ALTER TABLE pod_sandbox DROP COLUMN runtime_spec")
