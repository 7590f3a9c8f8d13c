"""An index on (pipeline, fetched_at): `enqueue --stale` reads a pipeline's oldest rows.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Built concurrently, outside the migration's transaction: on a large table a plain build
    # would hold off every writer for as long as it takes.
    with op.get_context().autocommit_block():
        op.execute(
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS records_pipeline_fetched_at "
            "ON records (pipeline, fetched_at)"
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute("DROP INDEX CONCURRENTLY IF EXISTS records_pipeline_fetched_at")
