"""Property-based fuzzing of ``coh serve``'s HTTP API from its own OpenAPI schema (schemathesis):
valid and invalid bodies for every route. No 5xx, every error in OpenAI's shape, responses as the
schema says, invalid data refused, and ``/health`` answering throughout.

Bounded for CI: FUZZ_EXAMPLES examples per route and mode (about 300 cases in all, against a tiny
model with a short context, so that generations stay short). ``COH_FUZZ_EXAMPLES`` raises it for a
longer run; the summary line (``-s``) gives the figures recorded in docs/reliability.md."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter

import httpx
import hypothesis
import pytest

from tests.serve.conftest import make_server

schemathesis = pytest.importorskip("schemathesis")

FUZZ_EXAMPLES = int(os.environ.get("COH_FUZZ_EXAMPLES", "12"))
TALLY: Counter = Counter()
HEALTH: dict = {"probes": 0, "failures": [], "slowest_s": 0.0}


class HealthProbe:
    """GET /health every 50 ms in a thread while the fuzzer runs; records failures and the slowest answer."""

    def __init__(self, url: str):
        self.url, self.stop = url, threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        with httpx.Client(timeout=10) as c:
            while not self.stop.is_set():
                start, failure = time.monotonic(), None
                try:
                    if c.get(self.url + "/health").json()["status"] != "ok":
                        failure = "status not ok"
                except Exception as e:  # a timeout or a refused connection: the server did not answer
                    failure = repr(e)
                HEALTH["probes"] += 1
                HEALTH["slowest_s"] = max(HEALTH["slowest_s"], time.monotonic() - start)
                if failure is not None:
                    HEALTH["failures"].append(failure)
                self.stop.wait(0.05)


@pytest.fixture(scope="module")
def fuzz_server(coh_model_dir, coh_server):
    # A short context keeps every generation the fuzzer asks for short.
    running = make_server(coh_model_dir, engine=coh_server.engine, max_model_len=48, name="tiny")
    probe = HealthProbe(running.url)
    yield running
    probe.stop.set()
    probe.thread.join(timeout=30)
    running.stop()


def openai_error_shape(ctx, response, case) -> None:
    """Every error answers {"error": {"message", "type", "param", "code"}} with a message that says something."""
    if response.status_code < 400:
        return
    body = response.json()
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, body
    assert error["code"] == response.status_code, body
    assert isinstance(error["message"], str) and len(error["message"]) > 10, body


def test_every_route_answers_any_body_without_a_server_error(fuzz_server):
    """Each operation of the schema, valid bodies and invalid ones, FUZZ_EXAMPLES of each.

    Hypothesis is driven here through schemathesis's strategies rather than its pytest plugin
    (``schema.parametrize``), whose fixture loader reads a pytest node attribute that pytest 9 removed."""
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        negative_data_rejection,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
              negative_data_rejection, openai_error_shape]
    schema = schemathesis.openapi.from_url(fuzz_server.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15, [op.label for op in operations]
    failures = []
    for operation in operations:
        modes = [schemathesis.GenerationMode.POSITIVE]
        if operation.method.upper() == "POST":  # the GET routes take no input to get wrong
            modes.append(schemathesis.GenerationMode.NEGATIVE)
        for mode in modes:
            @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
            @hypothesis.settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None, derandomize=True,
                                 suppress_health_check=list(hypothesis.HealthCheck), phases=[
                                     hypothesis.Phase.explicit, hypothesis.Phase.generate, hypothesis.Phase.shrink])
            def one(case):
                TALLY["cases"] += 1
                try:
                    response = case.call(base_url=fuzz_server.url, timeout=120)
                except Exception:
                    TALLY["no answer"] += 1
                    raise
                TALLY[f"{response.status_code // 100}xx"] += 1
                TALLY[response.status_code] += 1
                if response.status_code >= 400:
                    shaped = isinstance(_json(response), dict) and "error" in _json(response)
                    TALLY["clear errors" if shaped else "other errors"] += 1
                if "Traceback" in response.text:
                    TALLY["tracebacks"] += 1
                case.validate_response(response, checks=checks)

            try:
                one()
            except Exception as e:  # keep fuzzing the other operations; all failures are reported below
                failures.append(f"{operation.label} ({mode.value}): {type(e).__name__}: {str(e)[:2000]}")
    assert not failures, "\n\n".join(failures)


def _json(response):
    try:
        return response.json()
    except ValueError:
        return None


def test_health_answered_throughout_and_summary(fuzz_server):
    """Runs after the fuzzing (same module): the probe never failed, and the figures are printed."""
    if not TALLY["cases"]:
        pytest.skip("the fuzzing test did not run (deselected?)")
    stats = httpx.get(fuzz_server.url + "/health").json()
    print(f"\ncoh serve fuzz: {TALLY['cases']} cases, {TALLY['2xx']} 2xx, {TALLY['4xx']} 4xx "
          f"({TALLY['clear errors']} in OpenAI's error shape, {TALLY['other errors']} not), {TALLY['5xx']} 5xx, "
          f"{TALLY['tracebacks']} tracebacks, {TALLY['no answer']} without an answer; /health probed "
          f"{HEALTH['probes']} times, {len(HEALTH['failures'])} failures, slowest {HEALTH['slowest_s']:.2f} s; "
          f"engine failed batches {stats['failed_batches']}; by status: "
          f"{dict(sorted((k, v) for k, v in TALLY.items() if isinstance(k, int)))}")
    assert not HEALTH["failures"], HEALTH["failures"][:5]
    assert HEALTH["probes"] > 0
    assert TALLY["5xx"] == TALLY["tracebacks"] == TALLY["other errors"] == TALLY["no answer"] == 0
    assert stats["failed_batches"] == 0
