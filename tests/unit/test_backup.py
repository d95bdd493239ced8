"""tools/backup.py without a database: the restore list and the password's path."""

from __future__ import annotations

import pytest

from tools.backup import _libpq, restore_list

pytestmark = pytest.mark.unit

LISTING = """;
; Selected TOC Entries:
;
2; 3079 16386 EXTENSION - pg_stat_statements
3354; 0 0 COMMENT - EXTENSION pg_stat_statements
3; 3079 16400 EXTENSION - pgcrypto
3355; 0 0 COMMENT - EXTENSION pgcrypto
220; 1259 16500 TABLE public events erc8004
"""


def test_extensions_the_login_cannot_create_are_left_out() -> None:
    kept, skipped = restore_list(LISTING, {"pgcrypto", "plpgsql"})
    assert skipped == {"pg_stat_statements"}
    assert "pg_stat_statements" not in kept
    assert "EXTENSION - pgcrypto" in kept
    assert "COMMENT - EXTENSION pgcrypto" in kept
    assert "TABLE public events" in kept


def test_a_superuser_restores_everything() -> None:
    kept, skipped = restore_list(LISTING, None)
    assert skipped == set()
    assert kept.strip() == LISTING.strip()


def test_timescaledb_dumps_are_refused_for_a_non_superuser() -> None:
    with pytest.raises(SystemExit, match="TimescaleDB"):
        restore_list("5; 3079 1 EXTENSION - timescaledb\n", {"pgcrypto"})


def test_the_password_travels_in_the_environment() -> None:
    url, env = _libpq("postgresql://owner:s%40cret@db.example:5433/erc8004_backend?sslmode=require")
    assert url == "postgresql://owner@db.example:5433/erc8004_backend?sslmode=require"
    assert env["PGPASSWORD"] == "s@cret"
