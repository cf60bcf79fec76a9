"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from crictl.store.engine import Store, make_engine
from crictl.store.migrate import upgrade_to_head


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """A store on a new database at the schema's head."""
    db = tmp_path / "crictld.db"
    upgrade_to_head(db)
    s = Store(make_engine(db))
    yield s
    s.close()
