"""``kfaar db migrate``: migrates SQLite and PostgreSQL, repeatably; bad URLs exit 2, quietly."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from auth_service import store, store_postgres
from auth_service.db_cli import redact
from edge_agent.cli import main

PASSWORD = "s3cret-Pa55"


def test_migrates_a_new_sqlite_file_and_is_safe_to_repeat(tmp_path: Path, capsys) -> None:
    db = tmp_path / "kfaar.db"
    for _ in range(2):
        assert main(["db", "migrate", "--db", str(db)]) == 0
        assert capsys.readouterr().out == f"schema version {len(store.MIGRATIONS)}: sqlite:{db}\n"
    assert db.is_file()


def test_sqlite_in_a_missing_folder_is_a_clear_error(tmp_path: Path, capsys) -> None:
    assert main(["db", "migrate", "--db", str(tmp_path / "no" / "kfaar.db")]) == 2
    assert "no folder" in capsys.readouterr().err


def test_migrates_postgresql_from_the_environment(postgres_url: str, monkeypatch, capsys) -> None:
    monkeypatch.setenv("KFAAR_DB_URL", postgres_url)
    assert main(["db", "migrate"]) == 0
    expected = f"schema version {len(store_postgres.MIGRATIONS)}: {postgres_url}\n"
    assert capsys.readouterr().out == expected
    assert main(["db", "migrate", "--db-url", postgres_url]) == 0  # again: nothing to do
    assert capsys.readouterr().out == expected


def test_racing_migrations_all_succeed(postgres_url: str) -> None:
    # A Job and the first replicas may start together: the advisory lock serializes them.
    codes: list[int] = []

    def migrate() -> None:
        codes.append(main(["db", "migrate", "--db-url", postgres_url]))

    runs = [threading.Thread(target=migrate) for _ in range(3)]
    for t in runs:
        t.start()
    for t in runs:
        t.join()
    assert codes == [0, 0, 0]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (f"mysql://kfaar:{PASSWORD}@db/kfaar", "expected postgresql://"),
        (f"postgresql://kfaar:{PASSWORD}@db:http/kfaar", "the port must be a number"),
        (f"postgresql://kfaar:{PASSWORD}@[::1/kfaar", "not a valid PostgreSQL URL"),
        (f"postgresql://kfaar:{PASSWORD}@127.0.0.1:5432/kfaar?frob=1", "not a valid"),
        (f"host=db password={PASSWORD} port", "not a valid PostgreSQL URL"),
        (f"postgresql://kfaar:{PASSWORD}@127.0.0.1:1/kfaar", "cannot connect to PostgreSQL"),
    ],
)
def test_a_bad_url_exits_2_without_the_password(url: str, message: str, capsys) -> None:
    assert main(["db", "migrate", "--db-url", url]) == 2
    out, err = capsys.readouterr()
    assert message in err and "Traceback" not in err
    assert PASSWORD not in out + err


def test_a_password_is_redacted_wherever_it_appears() -> None:
    assert redact("postgresql://u:p%40ss@h/db") == "postgresql://u:***@h/db"
    assert redact("host=h password='a b' port=1") == "host=h password=*** port=1"
    assert redact("failed for p@ss", ("p@ss",)) == "failed for ***"
