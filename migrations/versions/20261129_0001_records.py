"""The records table: one row per (pipeline, key).

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE records (
            pipeline   text        NOT NULL,
            key        text        NOT NULL,
            payload    jsonb       NOT NULL,
            fetched_at timestamptz NOT NULL,
            written_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (pipeline, key)
        )
        """
    )
    op.execute("COMMENT ON TABLE records IS 'sluiceway: the newest record of each key'")


def downgrade() -> None:
    op.execute("DROP TABLE records")
