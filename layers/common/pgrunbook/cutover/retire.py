"""`pgrunbook retire`: drop an old database after a cutover, only when it is safe to.

Invariants (each refusal names the reason, exit 1; nothing is dropped):
- `--force` given and `--confirm` repeats the database's name exactly;
- the database carries pgrunbook's retire mark (its comment, written after a proven cutover);
- the mark's retire-after date has passed;
- no session other than ours is connected to it (a session there is an application that was not rolled);
- the DROP runs from the server's maintenance database, without FORCE: a session that connects in
  between makes it fail instead of being cut off.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

import psycopg
from psycopg import sql

from .. import dbinfo
from ..dburl import DatabaseUrl
from ..errors import PgrunbookError, RetireRefused, UsageError
from . import dbstate


@dataclass
class RetireResult:
    database: str
    dropped: bool
    mark: str
    retire_after: str

    def to_dict(self) -> dict[str, Any]:
        return {"database": self.database, "dropped": self.dropped, "mark": self.mark,
                "retire_after": self.retire_after}

    def text(self) -> str:
        return f"retired {self.database}: dropped (it was marked: {self.mark})"


def run_retire(database_url: str | None, *, force: bool, confirm: str | None,
               today: date | None = None) -> RetireResult:
    url = DatabaseUrl.parse(database_url, what="database URL to retire (--database-url)")
    if not force:
        raise UsageError(f"retire drops {url.display()}: pass --force and --confirm {url.dbname}")
    if confirm != url.dbname:
        raise UsageError(f"--confirm must repeat the database name exactly ({url.dbname!r}), got {confirm!r}")
    today = today or date.today()
    with dbinfo.connect(url, autocommit=True, application=dbstate.APPLICATION) as conn:
        mark = dbstate.retire_mark(conn)
        if mark is None:
            raise RetireRefused(f"{url.display()} carries no pgrunbook retire mark (only a database pgrunbook cut "
                                "over from, and set read-only, can be retired): nothing dropped")
        comment, after = mark
        if after > today:
            raise RetireRefused(f"{url.display()} may be retired after {after} ({(after - today).days} day(s) "
                                "left): nothing dropped")
        connected = dbstate.sessions(conn)
        if connected:
            raise RetireRefused(f"{len(connected)} session(s) still connected to {url.display()} "
                                f"({', '.join(s.label() for s in connected[:5])}): an application still uses it; "
                                "nothing dropped")
    last: Exception | None = None
    for maintenance in ("postgres", "template1"):
        try:
            with dbinfo.connect(url.with_dbname(maintenance), autocommit=True,
                                 application=dbstate.APPLICATION) as conn:
                conn.execute("SET default_transaction_read_only = off")
                conn.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(url.dbname)))
            return RetireResult(database=url.display(), dropped=True, mark=comment, retire_after=after.isoformat())
        except psycopg.errors.ObjectInUse:
            raise RetireRefused(f"a session connected to {url.display()} just now: nothing dropped") from None
        except psycopg.Error as exc:
            raise RetireRefused(f"DROP DATABASE {url.dbname} refused: {' '.join(str(exc).split())[:200]}") from None
        except PgrunbookError as exc:  # no such maintenance database: try the next one
            last = exc
    raise RetireRefused(f"cannot reach a maintenance database on the server of {url.display()}: {last}")
