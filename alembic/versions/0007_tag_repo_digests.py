"""the `images` view derives each tag's repository digest

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 05:00:00.000000

Since this revision a pull by tag makes one containerd image record, the tag's, and no
`repo@sha256:...` record beside it (RemoveImage then deletes one record and runs one
collection). The tag's repository digest is its repository and its target, which the view now
derives as `ImageRow.digests` does (crictl/store/images.py, `tag_digest`): the repository is
the name up to its last colon, when the part after that colon (the tag) holds no slash.
Digest records made before this revision, or by a pull by digest, are listed as before.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# rtrim(name, <name without its colons>) keeps the name up to its last colon.
IMAGES_VIEW = """
CREATE VIEW images AS
WITH tag AS (
    SELECT image_id, name, target_digest,
           length(rtrim(name, replace(name, ':', ''))) AS colon
    FROM image_name WHERE kind = 'tag'
),
repo_digest AS (
    SELECT image_id, name FROM image_name WHERE kind = 'digest'
    UNION
    SELECT image_id, substr(name, 1, colon - 1) || '@' || target_digest FROM tag
    WHERE colon > 1 AND instr(substr(name, colon + 1), '/') = 0
)
SELECT i.id,
       (SELECT json_group_array(n.name) FROM image_name n
        WHERE n.image_id = i.id AND n.kind = 'tag') AS repo_tags,
       (SELECT json_group_array(d.name) FROM repo_digest d
        WHERE d.image_id = i.id) AS repo_digests,
       i.size, i.uid, i.username, i.manifest_digest, i.chain_id,
       strftime('%Y-%m-%dT%H:%M:%fZ', i.updated_at / 1000000000.0, 'unixepoch') AS updated
FROM image i
"""

# revision 0002's
OLD_IMAGES_VIEW = """
CREATE VIEW images AS
SELECT i.id,
       (SELECT json_group_array(n.name) FROM image_name n
        WHERE n.image_id = i.id AND n.kind = 'tag') AS repo_tags,
       (SELECT json_group_array(n.name) FROM image_name n
        WHERE n.image_id = i.id AND n.kind = 'digest') AS repo_digests,
       i.size, i.uid, i.username, i.manifest_digest, i.chain_id,
       strftime('%Y-%m-%dT%H:%M:%fZ', i.updated_at / 1000000000.0, 'unixepoch') AS updated
FROM image i
"""


def upgrade() -> None:
    op.execute("DROP VIEW IF EXISTS images")
    op.execute(IMAGES_VIEW)


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS images")
    op.execute(OLD_IMAGES_VIEW)
