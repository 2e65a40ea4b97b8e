"""Writing the files of a build safely: a file appears only once complete (``atomic_writer``), an
output folder is checked before any work (``check_output_dir``), a build's outputs are staged and
moved into place together (``staged_outputs``), and Arrow tables become a ``datasets`` folder
(``write_dataset_folder``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO


def _usual_permissions(path: str | Path, mode: int = 0o666) -> None:
    """mkstemp / mkdtemp create 0600 / 0700; give the file or folder what open / mkdir would."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, mode & ~umask)


@contextlib.contextmanager
def atomic_writer(path: str | Path) -> Iterator[IO[str]]:
    """Open a text file for writing that appears at ``path`` only once it is complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            yield f
        _usual_permissions(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def check_output_dir(path: str | Path) -> None:
    """Raise ``ValueError`` unless ``path`` is, or can be made, a writable folder: before the work."""
    path = Path(path)
    probe = path
    while not probe.exists():
        if probe.is_symlink():
            raise ValueError(f"output folder {path}: {probe} is a broken symbolic link")
        probe = probe.parent
    if not probe.is_dir():
        what = "is a file" if probe == path else f"is under {probe}, which is a file"
        raise ValueError(f"output folder {path} {what}; give a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"output folder {path}: cannot write in {probe} (permission denied)")


@contextlib.contextmanager
def staged_outputs(out_dir: str | Path, names: Sequence[str], marker: str) -> Iterator[Path]:
    """Write a set of outputs (files or folders) so that ``out_dir`` holds all of one run or none.

    Yields an empty staging folder inside ``out_dir`` (same file system, so renames are atomic);
    write every output into it under its final name. On success, each of ``names`` in ``out_dir``
    is replaced by the staged one, or removed where the run made none (an earlier run's output
    would be stale), and ``marker`` (one of ``names``, written last, e.g. a summary) is removed
    first and moved in last: a folder with its marker holds one complete run. On failure the
    staging folder is removed and ``out_dir`` is left as it was. Other files in ``out_dir`` are
    never touched.
    """
    out_dir = Path(out_dir)
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=out_dir, prefix=".staging-"))
    try:
        yield stage
        if not (stage / marker).exists():
            raise RuntimeError(f"staged outputs lack their marker {marker}")
        old = out_dir / marker
        if old.exists():
            os.unlink(old)
        for name in [n for n in names if n != marker] + [marker]:
            new, dest = stage / name, out_dir / name
            if dest.is_dir() and not dest.is_symlink():
                trash = stage / f".old-{name}"
                os.replace(dest, trash)  # a folder cannot be replaced in one rename; its old copy goes with stage
            elif dest.exists() or dest.is_symlink():
                os.unlink(dest)
            if new.exists():
                os.replace(new, dest)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        if created:  # a failed run leaves no empty folder of its own making behind
            with contextlib.suppress(OSError):
                out_dir.rmdir()
        raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def write_dataset_folder(tables: Iterable, path: str | Path, features, num_rows: int, nbytes: int) -> str:
    """Write ``num_rows`` rows, given in order as consecutive Arrow tables of ``features``'
    columns, as a folder that ``datasets.load_from_disk`` reads, one table in memory at a time.

    The folder is what ``Dataset.save_to_disk`` writes: shards ``data-0000i-of-0000k.arrow``
    (written by ``datasets``' own ``ArrowWriter``), as many and split as it would split them
    (``nbytes``, the rows' in-memory size, sets the count), ``dataset_info.json`` and
    ``state.json``. ``save_to_disk`` itself needs the whole dataset as one object, in memory or
    memory-mapped (and mapped pages that were read count as the process's memory), hence this.
    The fingerprint in ``state.json`` is a hash of the shards' bytes, so the same rows give the
    same folder. An empty dataset gets one empty shard (``save_to_disk`` writes none, and
    ``load_from_disk`` then fails). Returns the fingerprint.
    """
    import datasets
    import pyarrow as pa
    from datasets.arrow_writer import ArrowWriter
    from datasets.utils.py_utils import asdict, convert_file_size_to_int

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    max_shard = convert_file_size_to_int(datasets.config.MAX_SHARD_SIZE)
    shards = max(1, min(num_rows, int(nbytes / max_shard) + 1))
    # Dataset.shard(shards, i, contiguous=True): the first num_rows % shards shards get one row more
    ends = [(num_rows // shards) * (i + 1) + min(i + 1, num_rows % shards) for i in range(shards)]
    names = [f"data-{i:05d}-of-{shards:05d}.arrow" for i in range(shards)]
    # save_to_disk writes each shard in batches of this many rows from its start; so does this,
    # whatever the sizes of the tables given, and the files match its files byte for byte.
    batch_rows = datasets.config.DEFAULT_MAX_BATCH_SIZE
    shard, written, pending, pending_rows = 0, 0, [], 0  # pending: rows of this shard not yet written
    writer = ArrowWriter(features=features, path=str(path / names[0]))

    def flush(everything: bool) -> None:
        nonlocal pending, pending_rows
        table = pa.concat_tables(pending)
        n = table.num_rows if everything else table.num_rows - table.num_rows % batch_rows
        if n:
            writer.write_table(table.slice(0, n), batch_rows)
        pending, pending_rows = ([table.slice(n)], table.num_rows - n) if n < table.num_rows else ([], 0)

    try:
        for table in tables:
            while table.num_rows:
                if written == ends[shard] and shard + 1 < shards:
                    if pending:
                        flush(everything=True)
                    writer.finalize()
                    shard += 1
                    writer = ArrowWriter(features=features, path=str(path / names[shard]))
                take = table.num_rows if shard + 1 == shards else min(table.num_rows, ends[shard] - written)
                pending.append(table.slice(0, take))
                pending_rows += take
                written += take
                table = table.slice(take)
                if pending_rows >= batch_rows:
                    flush(everything=False)
        if pending:
            flush(everything=True)
        writer.finalize()
    finally:
        writer.close()
    if written != num_rows or shard + 1 != shards:
        raise ValueError(f"{path}: expected {num_rows} rows, got {written}")
    digest = hashlib.sha256()
    buffer = bytearray(16 << 20)
    for name in names:
        with open(path / name, "rb") as f:
            while n := f.readinto(buffer):
                digest.update(memoryview(buffer)[:n])
    state = {"_data_files": [{"filename": name} for name in names], "_fingerprint": digest.hexdigest()[:16],
             "_format_columns": None, "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False,
             "_split": None}
    with open(path / "state.json", "w", encoding="utf-8") as f:
        json.dump(state, f, indent=2, sort_keys=True)
    info = asdict(datasets.DatasetInfo(features=features))
    with open(path / "dataset_info.json", "w", encoding="utf-8") as f:
        json.dump({key: info[key] for key in sorted(info)}, f, indent=2)  # as save_to_disk: top-level keys sorted
    return state["_fingerprint"]
