"""The migrations the package ships, found through importlib.resources; none is an error."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import migrate

ROOT = Path(__file__).resolve().parents[2]


def test_the_shipped_migrations_are_the_repository_files_in_order() -> None:
    shipped = migrate.discover()
    assert [m.name for m in shipped] == sorted(p.name for p in (ROOT / "migrations").glob("*.sql"))
    assert shipped[0].name == "0001_schema.sql"
    assert "CREATE TABLE gateway.audit_log" in shipped[0].sql


def test_a_directory_without_migrations_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("not a migration")
    with pytest.raises(migrate.MigrationError, match=r"no migration files \(\*\.sql\)"):
        migrate.discover(tmp_path)


def test_a_missing_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(migrate.MigrationError, match="no migration files"):
        migrate.discover(tmp_path / "absent")
