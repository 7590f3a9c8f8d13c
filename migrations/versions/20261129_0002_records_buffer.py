"""The records buffer: rows appended by writers in buffered mode, merged into records.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Logged, not UNLOGGED: a writer acks its messages once their rows are here, so the
    # buffer must survive a crash like the records table does.
    op.execute(
        """
        CREATE TABLE records_buffer (
            id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            pipeline    text        NOT NULL,
            key         text        NOT NULL,
            payload     jsonb       NOT NULL,
            fetched_at  timestamptz NOT NULL,
            buffered_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("CREATE INDEX records_buffer_pipeline_id ON records_buffer (pipeline, id)")
    op.execute(
        "COMMENT ON TABLE records_buffer IS "
        "'sluiceway: rows of buffered-mode writers waiting to be merged into records'"
    )


def downgrade() -> None:
    op.execute("DROP TABLE records_buffer")
