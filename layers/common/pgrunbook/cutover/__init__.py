"""Cutover: move the application from the old database to a verified copy, provably, reversibly.

The runbook's steps 3.4 (staging smoke), 4 (change DATABASE_URL, roll the service) and 5 (post-cutover
checks, keep the old database read-only), as one procedure with the same checks in both shells:
`pgrunbook cutover` / `rollback` / `retire` and the Restore state machine (cutover mode, after approval).

Modules: `window` (rows written since the backup), `dbstate` (freeze, read-only, sessions, retire mark),
`secret` (the DATABASE_URL secret), `roll` (ECS or signed webhook), `proof` (/ready, alarms, attachment,
sessions), `run` (the procedure and its rollback), `report`, `prepare` (production-ready candidate,
staging smoke), `steps` (the state machine's actions), `retire`.

Invariants:
1. Nothing is switched before every pre-flight check passed: the candidate answers, the secret's
   current URL names the old database, the roll target exists, the alarms exist and none is in ALARM,
   and, with a freeze, the candidate's row counts equal the frozen source's.
2. The secret only ever gains a version (the previous one stays AWSPREVIOUS) or has AWSCURRENT moved
   back; a rollback moves it back only while the current version is the one this cutover wrote.
3. Neither cutover nor rollback drops or alters the candidate's data.
4. A failed cutover or a rollback never leaves the old database read-only: a freeze pgrunbook set is
   lifted (a database that was read-only before stays so).
5. The old database is retired (dropped) only when pgrunbook marked it after a proven cutover, its
   retire-after date has passed, its name is typed back and nobody is connected to it.
6. Passwords never reach reports, logs, notifications or errors: URLs are shown masked.
"""

from __future__ import annotations
