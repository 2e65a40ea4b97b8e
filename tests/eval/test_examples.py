"""Reading evaluation examples: counts, errors and rows set aside."""

from __future__ import annotations

import pytest

from coh.data.errors import DataError, SetAside
from coh.eval.examples import read_examples
from tests.conftest import FIXTURES
from tests.eval.conftest import HH_81_92


def test_read_examples_counts_and_errors():
    examples, counts = read_examples("webgpt", str(FIXTURES / "webgpt_comparisons.jsonl"))
    assert counts == {"rows": 12, "examples": 10, "skipped": 2, "skipped: webgpt tie (equal scores)": 2}
    examples, counts = read_examples("dialogue", str(FIXTURES / "hh_rlhf_train.jsonl"), limit=3)
    assert len(examples) == 3 and counts["rows"] == 3
    bad = FIXTURES / "bad" / "hh_bad_transcript.jsonl"
    with pytest.raises(DataError, match=r"hh_bad_transcript.jsonl, line 1, field 'chosen'"):
        read_examples("dialogue", str(bad))


def test_read_examples_sets_aside_real_hh_rows_with_an_empty_reply():
    """Rows 81-92 of the published hh-rlhf harmless test split: row 87 has an empty chosen reply."""
    set_aside = SetAside()
    examples, counts = read_examples("dialogue", str(HH_81_92), set_aside=set_aside)
    assert len(examples) == 11 and counts["rows"] == 12 and counts["invalid"] == 1
    assert counts["invalid: chosen: empty reply"] == 1
    assert set_aside.rows == [{"file": str(HH_81_92), "line": 7, "field": "chosen", "problem": "empty reply"}]
    with pytest.raises(DataError, match=r"line 7, field 'chosen': empty reply"):
        read_examples("dialogue", str(HH_81_92))
    # --limit counts examples: the row set aside does not use one up
    examples, counts = read_examples("dialogue", str(HH_81_92), limit=8, set_aside=SetAside())
    assert len(examples) == 8 and counts["rows"] == 9 and counts["invalid"] == 1
