"""Records on disk during a build: the seeded shuffle read back in bounded buckets, and the
``datasets`` folder written a table at a time, checked against ``Dataset.save_to_disk`` itself."""

from __future__ import annotations

import itertools
import json
import random

import datasets
import numpy as np
import pyarrow as pa
import pytest

from coh.data.io import write_dataset_folder
from coh.data.spill import Spill, read_shuffled, shuffle_order
from coh.data.tokenize import TokenizedRecord, token_features, tokens_batch


def test_shuffle_order_is_random_shuffle():
    for n in (0, 1, 7, 1000):
        expected = list(range(n))
        random.Random("3/shuffle/train").shuffle(expected)
        assert shuffle_order(n, "3/shuffle/train").tolist() == expected


def spill_of(tmp_path, sizes: list[int]) -> tuple[Spill, pa.Table]:
    """A spill of batches of the given sizes (rows numbered in order, with text of varied length)."""
    spill, start = Spill(tmp_path / "records" / "train.arrow"), 0
    for size in sizes:
        rows = range(start, start + size)
        spill.append(pa.RecordBatch.from_pydict({"line": [f"{i}:" + "x" * (i % 37) + "\n" for i in rows],
                                                 "n": pa.array(rows, pa.int64())}))
        start += size
    spill.close()
    whole = pa.Table.from_batches(list(spill.batches())) if start else None
    return spill, whole


@pytest.mark.parametrize("bucket_bytes", [1, 500, 4_000, 10**9])  # one row a bucket ... all in one
@pytest.mark.parametrize("sizes", [[1], [3, 5, 1], [100, 100, 37, 1000, 2]])
def test_read_shuffled_is_the_in_memory_take(tmp_path, sizes, bucket_bytes):
    spill, whole = spill_of(tmp_path, sizes)
    order = shuffle_order(spill.rows, "0")
    tables = list(read_shuffled(spill, order, bucket_bytes))
    got = pa.concat_tables(tables)
    assert got.column("n").to_pylist() == order.tolist()  # a reference that cannot share a bug: the numbers
    assert got.equals(whole.take(order))
    if bucket_bytes < 10**9:
        assert max(t.num_rows for t in tables) <= -(-spill.rows // -(-spill.nbytes // bucket_bytes))
    assert [p.name for p in spill.path.parent.iterdir()] == ["train.arrow"]  # bucket files removed


def test_read_shuffled_of_nothing_and_a_wrong_order(tmp_path):
    spill = Spill(tmp_path / "empty.arrow")
    assert list(read_shuffled(spill, shuffle_order(0, "0"))) == []
    full, _ = spill_of(tmp_path, [4])
    with pytest.raises(ValueError, match="3 positions for 4 rows"):
        list(read_shuffled(full, np.arange(3)))


def token_table(n: int, seed: int = 0) -> pa.Table:
    rng = random.Random(seed)
    toks = []
    for _ in range(n):
        k = rng.randrange(1, 60)
        toks.append(TokenizedRecord([rng.randrange(50_000) for _ in range(k)], [rng.randrange(2) for _ in range(k)]))
    batch = tokens_batch([f"src/{i}/pn" for i in range(n)], ["src"] * n, ["pn"] * n, toks)
    return pa.Table.from_batches([batch])


def files(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_dataset_folder_is_what_save_to_disk_writes(tmp_path):
    table = token_table(2_345)
    theirs = tmp_path / "theirs"
    datasets.Dataset(table).save_to_disk(str(theirs))
    # one table: the very files save_to_disk writes, but for the fingerprint (ours hashes the data)
    ours = tmp_path / "ours"
    write_dataset_folder([table], ours, token_features(), table.num_rows, table.nbytes)
    mine, their = files(ours), files(theirs)
    assert mine.keys() == their.keys() == {"data-00000-of-00001.arrow", "dataset_info.json", "state.json"}
    assert mine["data-00000-of-00001.arrow"] == their["data-00000-of-00001.arrow"]
    assert mine["dataset_info.json"] == their["dataset_info.json"]
    state, their_state = json.loads(mine["state.json"]), json.loads(their["state.json"])
    assert {k: v for k, v in state.items() if k != "_fingerprint"} == \
        {k: v for k, v in their_state.items() if k != "_fingerprint"}
    # tables of any sizes give the same rows, written in save_to_disk's batches of 1,000
    pieces = tmp_path / "pieces"
    cuts = [0, 1, 2, 999, 1000, 1001, 1500, 2344, 2345]
    write_dataset_folder((table.slice(a, b - a) for a, b in itertools.pairwise(cuts)), pieces, token_features(),
                         table.num_rows, table.nbytes)
    loaded = datasets.load_from_disk(str(pieces))
    assert loaded.features == datasets.load_from_disk(str(theirs)).features == token_features()
    assert loaded.data.table.equals(table)
    with pa.OSFile(str(pieces / "data-00000-of-00001.arrow")) as f:
        assert [b.num_rows for b in pa.ipc.open_stream(f)] == [1000, 1000, 345]


def test_dataset_folder_shards_as_save_to_disk(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "MAX_SHARD_SIZE", "100KB")
    table = token_table(3_001, seed=1)
    theirs, ours = tmp_path / "theirs", tmp_path / "ours"
    datasets.Dataset(table).save_to_disk(str(theirs))
    write_dataset_folder((table.slice(i, 700) for i in range(0, 3_001, 700)), ours, token_features(),
                         table.num_rows, table.nbytes)
    names = sorted(p.name for p in ours.iterdir())
    assert names == sorted(p.name for p in theirs.iterdir()) and len(names) > 4  # several shards
    for name in names:
        if name.endswith(".arrow"):  # each shard holds the same rows
            assert datasets.Dataset.from_file(str(ours / name)).data.table.equals(
                datasets.Dataset.from_file(str(theirs / name)).data.table)
    assert datasets.load_from_disk(str(ours)).data.table.equals(table)


def test_dataset_folder_of_no_rows_loads(tmp_path):
    write_dataset_folder([], tmp_path / "empty", token_features(), 0, 0)
    loaded = datasets.load_from_disk(str(tmp_path / "empty"))  # save_to_disk's own empty folder does not load
    assert loaded.num_rows == 0 and loaded.features == token_features()


def test_dataset_folder_refuses_a_wrong_row_count(tmp_path):
    table = token_table(10)
    with pytest.raises(ValueError, match="expected 11 rows, got 10"):
        write_dataset_folder([table], tmp_path / "x", token_features(), 11, table.nbytes)
