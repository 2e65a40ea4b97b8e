"""Screenshot of the chat page's compare view for docs/serve.md: runs `coh serve` on a model, opens
the page in headless Chromium (Playwright), sends one message in the compare view (greedy) and saves
the page once both replies are in.

    coh demo                                  # trains runs/demo/coh/final (about 2 minutes)
    python docs/serve_screenshot.py           # -> docs/serve_compare.png
    python docs/serve_screenshot.py --model runs/tiny/final --message "hi" --message "and then?" --out /tmp/compare.png

Needs Chromium (`apt-get install chromium`) and `pip install playwright` (no browser download)."""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

DOCS = Path(__file__).resolve().parent
MESSAGES = ["What is the capital of Peru?", "Which number is larger, 3 or 8?"]  # questions of the demo's task


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, server: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"coh serve exited with status {server.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"coh serve did not answer {url}/health within {timeout:.0f} s")


def screenshot(url: str, out: Path, messages: list[str], max_tokens: int, chromium: str, width: int) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=[
            "--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": width, "height": 600})
        page.goto(url + "/")
        expect(page.locator("#model")).not_to_have_text("")
        page.eval_on_selector("#temperature", "e => { e.value = '0'; e.dispatchEvent(new Event('input')); }")
        page.fill("#max-tokens", str(max_tokens))
        page.check("#compare")
        for turn, message in enumerate(messages, 1):
            page.fill("#input", message)
            page.press("#input", "Enter")
            expect(page.locator(".msg.assistant:not(.pending)")).to_have_count(2 * turn, timeout=300_000)
        page.fill("#input", "")
        page.locator("#input").blur()
        page.screenshot(path=str(out), full_page=True)
        browser.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="runs/demo/coh/final", help="model folder for coh serve")
    parser.add_argument("--served-model-name", default="coh-demo")
    parser.add_argument("--out", type=Path, default=DOCS / "serve_compare.png")
    parser.add_argument("--message", action="append", help=f"a message (again for the next turn; default: {MESSAGES})")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--width", type=int, default=1100, help="viewport width in CSS pixels")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args(argv)
    if not Path(args.model).is_dir():
        parser.error(f"--model {args.model}: no such folder (run `coh demo` first for the default)")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "coh", "serve", args.model, "--port", str(port),
                               "--served-model-name", args.served_model_name, "--log-level", "warning"],
                              env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    try:
        wait_ready(url, server)
        screenshot(url, args.out, args.message or MESSAGES, args.max_tokens, args.chromium, args.width)
    finally:
        server.terminate()
        server.wait(timeout=60)
    print(f"{args.out}: {args.out.stat().st_size / 1024:.0f} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
