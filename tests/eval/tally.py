"""A pytest plugin that tallies how each `coh` command of a bad-input table ended, for
docs/reliability.md: a traceback (an exception escaped `main`), accepted (exit 0), not refused up
front (the command went on into lm-eval or uvicorn, which the tables forbid), or an error exit;
and for error exits whether the test passed (the message names what is wrong). Run it on the code
of any commit, for before/after figures:

    PYTHONPATH=src:tests/eval python -m pytest -q -p tally -k clear_error \\
        tests/eval/test_bad_inputs.py tests/judge/test_bad_inputs.py
"""

from __future__ import annotations

from collections import Counter

import pytest

_HOW: dict[str, str] = {}
_PASSED: dict[str, bool] = {}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    module, how = item.module, {}
    real = getattr(module, "main", None)

    def recorded(argv=None):
        try:
            status = real(argv)
        except SystemExit as e:
            how["end"] = f"exit {e.code}"
            raise
        except pytest.fail.Exception:  # a table's guard: lm-eval or uvicorn was started
            how["end"] = "not refused up front"
            raise
        except BaseException as e:
            how["end"] = f"traceback ({type(e).__name__})"
            raise
        how["end"] = f"exit {status}"
        return status

    if real is not None:
        module.main = recorded
    try:
        yield
    finally:
        if real is not None:
            module.main = real
        _HOW[item.nodeid] = how.get("end", "?")


def pytest_runtest_logreport(report):
    if report.when == "call":
        _PASSED[report.nodeid] = report.passed


def pytest_terminal_summary(terminalreporter):
    by_area: dict[str, Counter] = {}
    for nodeid, end in _HOW.items():
        area = nodeid.split("/")[1] if nodeid.startswith("tests/") else "?"
        if end.startswith("traceback"):
            kind = "traceback"
        elif end == "exit 0":
            kind = "accepted (exit 0)"
        elif end == "not refused up front":
            kind = end
        else:
            kind = "clear error" if _PASSED.get(nodeid) else "error exit, message not as expected"
        by_area.setdefault(area, Counter())[kind] += 1
    terminalreporter.section("coh bad-input tally")
    for area, counts in sorted(by_area.items()):
        terminalreporter.write_line(f"coh {area}: {sum(counts.values())} cases: " +
                                    ", ".join(f"{k} {v}" for k, v in counts.most_common()))
    for nodeid, end in _HOW.items():
        if end.startswith("traceback") or end in ("exit 0", "not refused up front"):
            terminalreporter.write_line(f"  {end}: {nodeid.split('[', 1)[-1].rstrip(']')}")
