"""The voting API of `coh judge serve`, fuzzed from its own OpenAPI schema by schemathesis against a
real uvicorn server: valid and invalid requests (its positive and negative modes), logged in. No
request may get a 5xx and the server must answer `/health` after every one. Bounded for CI:
``FUZZ_EXAMPLES`` per operation and phase; ``pytest -s`` prints the tally (cases, statuses)."""

from __future__ import annotations

import os
from collections import Counter

import httpx
import pytest
from hypothesis import HealthCheck, settings

from coh.judge.app import COOKIE, create_app
from coh.judge.sources import read_comparisons
from coh.judge.store import JudgeStore

from .conftest import comparison_rows, live_server, write_jsonl

if os.environ.get("CI"):  # a dev requirement: CI must run it, not skip it
    import schemathesis
else:
    schemathesis = pytest.importorskip("schemathesis", reason="pip install -e '.[dev]' (schemathesis)")

FUZZ_EXAMPLES = 40
PASSWORD = "fuzz-pw"


class Server:
    """A live judge server, a logged-in voter's cookie and a tally of what the fuzzer sent."""

    def __init__(self, url: str, cookie: str, store: JudgeStore):
        self.url, self.cookie, self.store = url, cookie, store
        self.statuses: Counter[int] = Counter()
        self.operations: Counter[str] = Counter()  # the schema's operations, by label
        self.other_methods = 0  # cases sent with a method the path does not have (coverage phase)


@pytest.fixture(scope="module")
def judge_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    store = JudgeStore(tmp / "votes.sqlite")
    store.add_comparisons(read_comparisons(write_jsonl(tmp / "c.jsonl", comparison_rows(8, ("a", "b", "c")))))
    app = create_app(store, password=PASSWORD, max_votes=3)
    with live_server(app) as url:
        r = httpx.post(f"{url}/api/login", json={"name": "fuzzer", "password": PASSWORD})
        r.raise_for_status()
        server = Server(url, r.cookies[COOKIE], store)
        yield server
    total = sum(server.statuses.values())
    print(f"\nfuzz coh judge: {total} cases over {len(server.operations)} operations ({server.other_methods} with "
          f"a method the path does not have); statuses {dict(sorted(server.statuses.items()))}; "
          f"5xx: {sum(n for s, n in server.statuses.items() if s >= 500)}")


# The app's own OpenAPI document (the app does not publish it: `openapi_url=None`); the schema does
# not depend on the data, so an in-memory store serves to build it at collection time.
schema = schemathesis.openapi.from_dict(create_app(JudgeStore(":memory:")).openapi())


@schema.parametrize()
@settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_no_5xx_and_the_server_keeps_answering(case, judge_server):
    """Every operation: schemathesis' examples, coverage (boundary and invalid values of each field)
    and fuzzing phases (``FUZZ_EXAMPLES`` cases each, valid and invalid requests)."""
    response = case.call(base_url=judge_server.url, cookies={COOKIE: judge_server.cookie}, timeout=30)
    judge_server.statuses[response.status_code] += 1
    judge_server.operations[case.operation.label] += 1
    judge_server.other_methods += case.method.upper() != case.operation.method.upper()
    assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.status_code} {response.text}"
    assert httpx.get(f"{judge_server.url}/health", timeout=30).json() == {"status": "ok"}
    case.validate_response(response)
