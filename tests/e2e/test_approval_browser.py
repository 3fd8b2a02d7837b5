"""A person approves a cutover in a real browser: headless Chromium (Debian's package, installed by
`make setup` through scripts/setup-system.sh) driven by Playwright for Python. It opens the link from
the notification, sees the verification report, fills "Your name", clicks "Approve"; the execution
resumes and the audit record names them.

Skipped only when the browser cannot be installed on this machine (the skip says which part is
missing); Playwright's own browser download is not used."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import psycopg
import pytest

from pgrunbook import aws
from pgrunbook.approval.runner import LocalApprovals
from pgrunbook.approval.service import ATTRIBUTE
from pgrunbook.localcloud import LocalCloud, LocalDatabase
from pgrunbook.pgserver import LocalServer

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
               "--no-first-run", "--disable-sync"]

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed "
                               "(`make setup` installs the dev dependencies)")
if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is missing: scripts/setup-system.sh installs Debian's chromium when it runs as root "
                f"with apt-get (apt-get: {shutil.which('apt-get') or 'not found'}); it could not here",
                allow_module_level=True)

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish")


def test_a_person_approves_in_chromium(app_db: str, pg_server: LocalServer) -> None:
    approvals = LocalApprovals()
    try:
        with LocalCloud([LocalDatabase("app", app_db)], env=approvals.env) as cloud:
            approvals.attach(cloud)
            assert cloud.run("BackupStateMachine", {"kind": "manual", "databases": ["app"]}).status == "SUCCEEDED"
            arn = cloud.start("RestoreStateMachine", {"database": "app", "mode": "cutover",
                                                      "requested_by": "release train 42"})
            facts: dict[str, object] = {}

            def asked(_ex: object) -> bool:
                for _s, _m, attrs in cloud.published():
                    if ATTRIBUTE in attrs:
                        facts.update(json.loads(attrs[ATTRIBUTE]))
                return bool(facts)

            assert cloud.wait(arn, timeout=120, until=asked).status == "RUNNING"
            link = str(facts["approve_url"])

            with sync_api.sync_playwright() as p:
                browser = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
                try:
                    page = browser.new_page()
                    response = page.goto(link)
                    assert response is not None and response.status == 200
                    assert page.get_by_role("heading", name="Approve cutover of app?").is_visible()
                    report = page.locator("body").inner_text()
                    total = facts["checks_total"]
                    for text in (f"Verification: VERIFIED, {total}/{total} checks passed", "rows public.User",
                                 "release train 42", "Waiting for your decision", str(facts["backup"])):
                        assert text in report, text
                    assert page.locator("table tbody tr").count() == total  # every check is a row
                    page.get_by_label("Your name").fill("Ann in Chromium")
                    page.get_by_label("Comment").fill("counts match, go")
                    page.get_by_role("button", name="Approve").click()
                    page.wait_for_load_state()
                    status = page.get_by_role("status").inner_text()
                    assert "Approved" in status and "approved by Ann in Chromium" in status, status
                    user_agent = page.evaluate("navigator.userAgent")
                finally:
                    browser.close()

            ex = cloud.wait(arn)
            assert ex.status == "SUCCEEDED", (ex.error, ex.cause)
            assert "CutoverApproved" in ex.states_entered()
            decision = ex.output["approval"]
            assert decision["approver"] == "Ann in Chromium" and decision["comment"] == "counts match, go"
            assert decision["via"] == "page" and decision["user_agent"] == user_agent
            assert decision["source_ip"] == "127.0.0.1"
            key = ex.output["report"]["report"].split(f"s3://{cloud.bucket}/", 1)[1]
            audit = json.loads(aws.client("s3").get_object(Bucket=cloud.bucket, Key=key)["Body"].read())["approval"]
            assert audit["approver"] == "Ann in Chromium" and audit["decided_at"] == decision["decided_at"]
            target = ex.output["target"]["name"]
    finally:
        approvals.close()
    with psycopg.connect(pg_server.url(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{target}" WITH (FORCE)')
