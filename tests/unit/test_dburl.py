from __future__ import annotations

import pytest

from pgrunbook.dburl import DatabaseUrl, mask_secrets
from pgrunbook.errors import UsageError


def test_password_is_kept_out_of_conninfo_display_and_repr() -> None:
    url = DatabaseUrl.parse("postgresql://app:p%40ss@db.example.com:6543/prod?sslmode=require")
    assert url.password == "p@ss"
    assert "p@ss" not in url.conninfo() and "p@ss" not in repr(url) and "p@ss" not in str(url)
    assert url.display() == "postgresql://app:***@db.example.com:6543/prod"
    assert "sslmode=require" in url.conninfo()
    assert url.tool_env() == {"PGPASSWORD": "p@ss"}


def test_key_value_conninfo_is_accepted() -> None:
    url = DatabaseUrl.parse("host=/tmp/sock port=5433 dbname=app user=me password=x")
    assert (url.host, url.port, url.dbname, url.password) == ("/tmp/sock", "5433", "app", "x")


@pytest.mark.parametrize("bad", ["", "   ", "postgresql://host"])
def test_bad_urls_are_usage_errors(bad: str) -> None:
    with pytest.raises(UsageError):
        DatabaseUrl.parse(bad)


def test_mask_secrets_in_free_text() -> None:
    text = "failed: postgresql://u:hunter2@h/db and host=h password=hunter3 dbname=x"
    masked = mask_secrets(text)
    assert "hunter2" not in masked and "hunter3" not in masked
    assert "postgresql://u:***@h/db" in masked


def test_same_target_compares_endpoint_and_database() -> None:
    a = DatabaseUrl.parse("postgresql://u:x@h:5432/db")
    assert a.same_target(DatabaseUrl.parse("postgresql://other:y@h:5432/db"))
    assert not a.same_target(DatabaseUrl.parse("postgresql://u:x@h:5432/db2"))
