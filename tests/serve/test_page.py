"""The chat page in headless Chromium (Debian's, driven by Playwright): multi-turn streaming chat,
the feedback control, temperature, regenerate, reset, and model output that tries to inject HTML.

Skipped when Chromium is missing, unless COH_REQUIRE_BROWSER=1 (CI), which makes that a failure."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from tests.generation.fixtures import SCRIPT

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        if os.environ.get("COH_REQUIRE_BROWSER") == "1":
            pytest.fail(f"COH_REQUIRE_BROWSER=1 but Chromium is not at {CHROMIUM}")
        pytest.skip(f"Chromium not found at {CHROMIUM}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        yield b
        b.close()


def expect(locator):
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def test_chat_page_streams_replies_as_text_and_never_runs_model_html(browser, scripted_server):
    page = browser.new_page()
    dialogs, errors, requests = [], [], []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: requests.append(json.loads(r.post_data)) if r.url.endswith("/chat/completions")
            else None)
    page.goto(scripted_server.url + "/")
    expect(page.locator("#model")).to_have_text("scripted")
    assert page.input_value("#feedback") == "good"  # the positive phrase by default
    assert "A helpful answer:" in page.text_content("#feedback option[value=good]")

    # The user's text carries HTML too; the model's reply is `<img src onerror=alert(1)> hello`.
    page.fill("#input", "<b>bold?</b> hi")
    page.click("#send")
    expect(page.locator(".msg.assistant:not(.pending)")).to_have_count(1)
    replies = page.locator(".msg.assistant .body")
    assert replies.nth(0).text_content() == SCRIPT
    assert page.locator(".msg.user .body").nth(0).text_content() == "<b>bold?</b> hi"
    assert page.locator("#log img").count() == 0 and page.locator("#log b").count() == 0
    assert requests[-1]["stream"] is True and requests[-1]["feedback"] == "good"

    # Second turn under the negative phrase at temperature 0: the history goes back to the server.
    page.select_option("#feedback", "bad")
    page.eval_on_selector("#temperature", "e => { e.value = '0'; e.dispatchEvent(new Event('input')); }")
    assert page.text_content("#temperature-value") == "0"
    page.fill("#input", "again")
    page.press("#input", "Enter")
    expect(page.locator(".msg.assistant:not(.pending)")).to_have_count(2)
    assert "An unhelpful answer:" in page.locator(".msg.assistant .who").nth(1).text_content()
    last = requests[-1]
    assert last["feedback"] == "bad" and last["temperature"] == 0
    assert [m["role"] for m in last["messages"]] == ["user", "assistant", "user"]
    assert last["messages"][1]["content"] == SCRIPT

    # A phrase of one's own, then regenerate: the last reply is replaced, not added to.
    page.select_option("#feedback", "custom")
    page.fill("#phrase", "A much better answer:")
    page.click("#regenerate")
    expect(page.locator("#send")).to_be_enabled()
    expect(page.locator(".msg.assistant:not(.pending)")).to_have_count(2)
    assert requests[-1]["feedback"] == "A much better answer:"
    assert [m["role"] for m in requests[-1]["messages"]] == ["user", "assistant", "user"]
    assert page.locator(".msg").count() == 4

    page.click("#reset")
    assert page.locator(".msg").count() == 0
    assert page.locator("#log img").count() == 0
    assert dialogs == [] and errors == []
    assert page.evaluate("document.querySelectorAll('img').length") == 0
    page.close()


def test_chat_page_asks_for_the_api_key(browser, scripted_model_dir, scripted_server):
    from tests.serve.conftest import make_server

    running = make_server(scripted_model_dir, name="scripted", engine=scripted_server.engine, api_key="k3y")
    try:
        page = browser.new_page()
        page.goto(running.url + "/")
        page.wait_for_selector("#key-label:not([hidden])")
        page.fill("#key", "k3y")
        page.dispatch_event("#key", "change")
        expect(page.locator("#model")).to_have_text("scripted")
        page.fill("#input", "hi")
        page.click("#send")
        expect(page.locator(".msg.assistant:not(.pending)")).to_have_count(1)
        assert page.locator(".msg.assistant .body").nth(0).text_content() == SCRIPT
        page.close()
    finally:
        running.stop()


def test_chat_page_loads_without_a_failed_request_or_console_error(browser, scripted_server):
    page = browser.new_page()
    failed, console, errors = [], [], []
    page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    page.on("requestfailed", lambda r: failed.append(f"{r.failure} {r.url}"))
    page.on("console", lambda m: console.append(m.text) if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(scripted_server.url + "/")
    expect(page.locator("#model")).to_have_text("scripted")
    page.wait_for_load_state("networkidle")
    assert failed == [] and console == [] and errors == []
    page.close()


def test_favicon_is_served_without_a_key(coh_model_dir, coh_server):
    import httpx

    from tests.serve.conftest import make_server

    running = make_server(coh_model_dir, engine=coh_server.engine, api_key="s3cret")
    try:
        for path in ("/favicon.ico", "/static/favicon.svg"):
            r = httpx.get(running.url + path)
            assert r.status_code == 200 and r.headers["content-type"].startswith("image/svg+xml")
            assert r.text.startswith("<svg")
    finally:
        running.stop()


# -- the compare view -------------------------------------------------------------------------------

def chat_reply(server, messages: list[dict], feedback: str, max_tokens: int) -> str:
    """The server's non-streamed greedy reply to ``messages`` under ``feedback``."""
    import httpx

    r = httpx.post(server.url + "/v1/chat/completions", timeout=60, json={
        "model": "lively", "messages": messages, "feedback": feedback, "temperature": 0, "max_tokens": max_tokens})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def open_compare(browser, server, max_tokens: int = 12, viewport: dict | None = None):
    """The page in the compare view at temperature 0, switched on with the keyboard; returns the
    page and the lists its dialogs, errors (page errors and console errors) and chat requests go to."""
    page = browser.new_page(viewport=viewport or {"width": 1200, "height": 800})
    dialogs, errors, requests = [], [], []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("request", lambda r: requests.append(json.loads(r.post_data)) if r.url.endswith("/chat/completions")
            else None)
    page.goto(server.url + "/")
    expect(page.locator("#model")).to_have_text("lively")
    page.eval_on_selector("#temperature", "e => { e.value = '0'; e.dispatchEvent(new Event('input')); }")
    page.fill("#max-tokens", str(max_tokens))
    page.focus("#compare")
    page.keyboard.press("Space")
    expect(page.locator("#lane-b")).to_be_visible()
    return page, dialogs, errors, requests


def replies(page, log_id: str) -> list[str]:
    return page.locator(f"#{log_id} .msg.assistant .body").all_text_contents()


def test_compare_view_streams_both_phrases_at_once_each_column_its_own_history(browser, lively_server):
    page, dialogs, errors, requests = open_compare(browser, lively_server)
    assert page.input_value("#feedback") == "good" and page.input_value("#feedback-b") == "bad"
    expect(page.locator("#title-a")).to_have_text("A · A helpful answer:")
    expect(page.locator("#title-b")).to_have_text("B · An unhelpful answer:")
    finished = []
    page.on("requestfinished", lambda r: finished.append(len(requests)) if r.url.endswith("/chat/completions")
            else None)

    page.focus("#input")
    page.keyboard.type("hello there")
    page.keyboard.press("Enter")
    for log in ("log", "log-b"):
        expect(page.locator(f"#{log} .msg.assistant:not(.pending)")).to_have_count(1)
    # Both requests were sent before either answer was complete: streamed together.
    assert len(requests) == 2 and finished[0] == 2
    assert sorted(r["feedback"] for r in requests) == ["bad", "good"] and all(r["stream"] for r in requests)
    user = {"role": "user", "content": "hello there"}
    good, bad = chat_reply(lively_server, [user], "good", 12), chat_reply(lively_server, [user], "bad", 12)
    assert good != bad  # the two phrases make different prompts, so the tiny model's replies differ
    assert replies(page, "log") == [good] and replies(page, "log-b") == [bad]
    assert page.locator("#log .msg.user .body").all_text_contents() == ["hello there"]
    assert page.locator("#log-b .msg.user .body").all_text_contents() == ["hello there"]

    # The second message goes to each column with that column's own earlier reply.
    page.fill("#input", "and then?")
    page.press("#input", "Enter")
    for log in ("log", "log-b"):
        expect(page.locator(f"#{log} .msg.assistant:not(.pending)")).to_have_count(2)
    by_feedback = {r["feedback"]: r["messages"] for r in requests[2:]}
    follow = {"role": "user", "content": "and then?"}
    assert by_feedback == {"good": [user, {"role": "assistant", "content": good}, follow],
                           "bad": [user, {"role": "assistant", "content": bad}, follow]}
    assert replies(page, "log")[1] == chat_reply(lively_server, by_feedback["good"], "good", 12)
    assert replies(page, "log-b")[1] == chat_reply(lively_server, by_feedback["bad"], "bad", 12)

    # Any two phrases: B under literal text, then regenerate replaces the last reply of both columns.
    page.select_option("#feedback-b", "custom")
    page.fill("#phrase-b", "A much better answer:")
    expect(page.locator("#title-b")).to_have_text("B · A much better answer:")
    page.click("#regenerate")
    expect(page.locator("#send")).to_be_enabled()
    for log in ("log", "log-b"):
        expect(page.locator(f"#{log} .msg.assistant:not(.pending)")).to_have_count(2)
    regenerated = {r["feedback"]: r["messages"] for r in requests[4:]}
    assert set(regenerated) == {"good", "A much better answer:"} and len(requests) == 6
    assert regenerated["A much better answer:"] == by_feedback["bad"]
    assert replies(page, "log-b")[1] == chat_reply(lively_server, by_feedback["bad"], "A much better answer:", 12)
    assert replies(page, "log")[1] == chat_reply(lively_server, by_feedback["good"], "good", 12)
    assert "A much better answer:" in page.locator("#log-b .msg.assistant .who").nth(1).text_content()

    # Out of the compare view the chat goes on in column A alone; back in, B starts from A's history.
    page.uncheck("#compare")
    expect(page.locator("#lane-b")).to_be_hidden()
    page.check("#compare")
    assert replies(page, "log-b") == replies(page, "log")
    page.click("#reset")
    assert page.locator(".msg").count() == 0
    assert dialogs == [] and errors == []
    page.close()


def test_compare_view_stop_cancels_both_replies(browser, lively_server):
    import time

    import httpx

    from tests.generation.fixtures import paused

    page, dialogs, errors, requests = open_compare(browser, lively_server, max_tokens=64)
    before = httpx.get(lively_server.url + "/health").json()["aborted_rows"]
    with paused(lively_server.engine):  # both requests wait in the queue until stopped
        page.fill("#input", "hi")
        page.press("#input", "Enter")
        expect(page.locator(".msg.assistant.pending")).to_have_count(2)
        deadline = time.monotonic() + 30
        while httpx.get(lively_server.url + "/health").json()["queued"] < 2:
            assert time.monotonic() < deadline, "the page's two requests did not reach the server"
            time.sleep(0.05)
        page.keyboard.press("Escape")
        expect(page.locator(".msg.assistant.pending")).to_have_count(0)
        expect(page.locator("#send")).to_be_enabled()
        assert page.is_disabled("#stop")
    deadline = time.monotonic() + 30  # the server drops both cancelled requests when it gets to them
    while httpx.get(lively_server.url + "/health").json()["aborted_rows"] < before + 2:
        assert time.monotonic() < deadline, "the stopped requests were not cancelled on the server"
        time.sleep(0.05)
    assert len(requests) == 2
    assert page.locator(".msg.assistant").count() == 2  # each column keeps its (empty) stopped reply

    # Stop with the button, after the replies started streaming: both stop, and text so far stays.
    page.fill("#max-tokens", "4000")  # far more than fits in the time the test takes
    page.fill("#input", "go on")
    page.press("#input", "Enter")
    expect(page.locator("#log .msg.assistant.pending .body")).not_to_have_text("")
    expect(page.locator("#log-b .msg.assistant.pending .body")).not_to_have_text("")
    page.click("#stop")
    expect(page.locator(".msg.assistant.pending")).to_have_count(0)
    assert all(replies(page, log)[1] for log in ("log", "log-b"))
    assert dialogs == [] and errors == []
    page.close()


def test_compare_view_columns_stack_on_a_narrow_screen(browser, lively_server):
    for width, side_by_side in ((1200, True), (380, False)):
        page, _, errors, _ = open_compare(browser, lively_server, viewport={"width": width, "height": 800})
        a, b = page.locator("#lane-a").bounding_box(), page.locator("#lane-b").bounding_box()
        if side_by_side:
            assert b["x"] >= a["x"] + a["width"] and abs(b["y"] - a["y"]) < 1
        else:
            assert b["y"] >= a["y"] + a["height"] and abs(b["x"] - a["x"]) < 1
        assert page.evaluate("document.documentElement.scrollWidth") <= width  # nothing wider than the screen
        assert errors == []
        page.close()
