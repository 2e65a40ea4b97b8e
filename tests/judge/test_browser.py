"""The voting page in headless Chromium: log in, judge with clicks and keys, markup stays text,
nothing injected runs, a reload resumes. Skipped without Chromium unless COH_REQUIRE_BROWSER=1."""

from __future__ import annotations

import os
import shutil
import time

import pytest

from coh.judge.app import create_app

from .conftest import HOSTILE, live_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        if os.environ.get("COH_REQUIRE_BROWSER") == "1":
            pytest.fail(f"COH_REQUIRE_BROWSER=1 but Chromium is missing at {CHROMIUM}")
        pytest.skip("Chromium not installed (apt-get install chromium); set COH_REQUIRE_BROWSER=1 to fail instead")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


def test_vote_in_the_browser(browser, store):
    from playwright.sync_api import expect

    events: list[str] = []
    with live_server(create_app(store, password="pw")) as base:
        context = browser.new_context()
        page = context.new_page()
        page.on("dialog", lambda d: (events.append(f"dialog {d.message}"), d.dismiss()))
        page.on("pageerror", lambda e: events.append(f"error {e}"))
        page.on("console", lambda m: events.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.goto(base + "/")
        page.fill("#name", "Ada")
        page.fill("#password", "wrong")
        page.click("#login button[type=submit]")
        page.wait_for_selector("#error:not([hidden])")
        assert "wrong password" in page.text_content("#error")
        page.fill("#password", "pw")
        page.click("#login button[type=submit]")
        page.wait_for_selector("#vote:not([hidden])")
        assert page.text_content("#who") == "Ada" and page.text_content("#progress") == "0 of 6 judged"
        assert not page.is_visible("#login") and not page.is_visible("#done") and page.is_visible("#left")

        voter = store.voter("Ada")
        judged = []
        for step in range(6):
            cid = store.next_comparison(voter.id).id
            c = store.comparison(cid)
            left = c.output_a if store.left_side(voter.id, cid) == "a" else c.output_b
            right = c.output_b if left == c.output_a else c.output_a
            # exactly the stored text, markup included, as text: no element was made from it
            assert page.text_content("#left") == left and page.text_content("#right") == right
            assert page.eval_on_selector("#prompt", "e => e.textContent") == f"user: {c.prompt[0]['content']}"
            for box in ("#left", "#right", "#prompt"):
                assert page.eval_on_selector(box, "e => e.querySelectorAll('script, img, b').length") == 0
            assert HOSTILE[0] in left + right and HOSTILE[1] in left + right and HOSTILE[2] in c.prompt[0]["content"]
            if step == 0:
                page.fill("#comment", "<i>left</i> is clearer")
                page.click("button[data-choice=left]")
                judged.append((cid, store.left_side(voter.id, cid), "<i>left</i> is clearer"))
            elif step == 1:
                page.keyboard.press("t")
                judged.append((cid, "tie", ""))
            elif step == 2:
                page.click("button[data-choice=right]")
                judged.append((cid, "b" if store.left_side(voter.id, cid) == "a" else "a", ""))
            else:  # come back later: a fresh page with the cookie resumes at the same comparison
                page.reload()
                page.wait_for_selector("#vote:not([hidden])")
                assert page.text_content("#progress") == f"{step} of 6 judged"
                assert page.text_content("#left") == left
                page.keyboard.press("n")
                judged.append((cid, "neither", ""))
            expect(page.locator("#progress")).to_have_text(f"{step + 1} of 6 judged")
        page.wait_for_selector("#done:not([hidden])")
        assert page.evaluate("window.__pwned") is None
        # only the expected refusals (before logging in, the wrong password); no CSP report, no script error
        assert [e for e in events if "status of 401" not in e] == []
        votes = [(v.comparison.id, v.choice, v.comment) for v in store.votes()]
        assert votes == judged

        # results page: the table from the API, the plot image loads
        page.goto(base + "/results")
        page.wait_for_selector("#table:not([hidden])")
        assert page.text_content("#rows td") == "coh"
        # (wait_for_function evaluates a string, which the page's CSP rightly refuses: poll instead)
        deadline = time.monotonic() + 20
        while not page.eval_on_selector("#plot", "e => e.complete && e.naturalWidth > 0"):
            assert time.monotonic() < deadline, "the plot did not load"
            time.sleep(0.1)
        # "not you?" logs out
        page.goto(base + "/")
        page.wait_for_selector("#done:not([hidden])")
        page.click("#switch")
        page.wait_for_selector("#login:not([hidden])")
        context.close()
