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
