"""The results store: one folder per run, append-only Parquet parts in one fixed long ("tidy") schema.

Layout::

    <results_root>/<run_id>/meta.json                          written once, atomically, when the run starts
    <results_root>/<run_id>/records/part-000000.parquet        one part per flush (normally one per epoch)
    <results_root>/<run_id>/records/part-000000-000499.parquet parts 0..499 compacted into one file (finished runs)

Why this shape:

* **One schema for everything** (:data:`SCHEMA`): a row is one number -- ``(run, epoch, key) -> value``. Adding a
  new metric never changes the schema, so every part of every run of every array job reads with one
  ``pd.read_parquet`` call (:func:`load_results`), and :func:`wide` pivots to one row per (run, epoch) when wanted.
* **Crash safety**: every file is written to a hidden temp file in the same folder, fsynced, then ``os.replace``d
  into place. A run killed at any moment leaves every earlier part complete and readable and never a half-written
  ``part-*.parquet`` (at worst a hidden ``.part-*.tmp-*`` file, which readers ignore and the next recorder removes).
* **One writer per run**: a recorder holds an exclusive lock on its run folder (``flock`` on ``.writer.lock``,
  which Linux's NFS client maps to NFS locks) from the moment it opens until its process ends or drops it, so a
  second process opening the same run -- a duplicate job, a second ``--run-id`` -- is refused with
  :class:`bench.runlock.RunLockedError` before it writes or deletes anything (``bench/runlock.py``). A killed
  writer's lock goes with its process.
* **Resuming without duplicates**: a recorder opened on an existing run knows the last epoch on disk
  (:meth:`RunRecorder.last_epoch`); logging an epoch at or before it raises :class:`EpochAlreadyFlushedError`
  instead of silently double-counting it.
* **Compaction** (:func:`compact_run`, at the end of every finished run and ``python -m bench.records compact``):
  a run's parts are rewritten as one file whose name gives the range of part numbers it holds, published with one
  ``os.replace``, after which the parts it covers are deleted. Readers (:func:`live_parts`, :func:`load_results`)
  skip a part that a compacted file covers, so a compaction killed at any step leaves every row readable exactly
  once; the next compaction or recorder removes the leftovers. A glob of ``part-*.parquet`` alone can see a row
  twice while a compaction runs or after one was killed: read through :func:`load_results`.
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import logging
import os
import re
import secrets
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable, Mapping

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from bench.provenance import collect_provenance
from bench.runlock import writer_lock

logger = logging.getLogger(__name__)

SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("method", pa.string()),
        ("world", pa.string()),
        ("reward", pa.string()),
        ("seed", pa.int64()),
        ("epoch", pa.int64()),
        ("key", pa.string()),
        ("value", pa.float64()),
        ("time", pa.float64()),  # unix seconds when the value was logged
    ]
)
COLUMNS: tuple[str, ...] = tuple(SCHEMA.names)
RUN_COLUMNS: tuple[str, ...] = ("run_id", "method", "world", "reward", "seed")  # constant within one run
META_COLUMNS: tuple[str, ...] = ("ablation",)  # run meta that load_results joins onto every row
KNOWN_METHODS: tuple[str, ...] = ("nft", "flowgrpo", "flowgrpo-fast", "grpo-guard", "tempflow-grpo", "awm", "dgpo",
                                   "dgpo-wocfg", "dgpo-wocfg-emaref", "cfg")

META_FILE = "meta.json"
RECORDS_DIR = "records"
_PART_NAME = re.compile(r"^part-(\d{6})(?:-(\d{6}))?\.parquet$")  # part-<n> or compacted part-<first>-<last>
_STALE_COMPACTION = ".part-??????-??????.parquet.tmp-*"  # the temp file of a compaction that was killed
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class EpochAlreadyFlushedError(ValueError):
    """An epoch that is already on disk was logged again; a resumed run must start at ``last_epoch() + 1``."""


def make_run_id(method: str, reward: str, seed: int, stamp: str | None = None) -> str:
    """``<method>_<reward>_s<seed>_<stamp>``, safe as a folder name.

    Without ``stamp`` the stamp is a UTC timestamp plus 6 random hex digits, so array tasks that start in the same
    second still get different ids. Pass ``stamp`` (e.g. ``f"{array_job_id}-{task_id}"``) for a deterministic id,
    which is what lets a requeued job find and resume its own run.
    """
    if stamp is None:
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)
    return "_".join([_slug(method), _slug(reward), f"s{int(seed)}", _slug(stamp)])


def check_run_id(run_id: str) -> str:
    """``run_id`` itself when it is safe as a folder name; a ``ValueError`` that says what is allowed otherwise."""
    if not _RUN_ID.match(run_id):
        raise ValueError(f"run_id {run_id!r} must be letters, digits, '.', '_' or '-', starting with a letter or "
                         "digit (see make_run_id)")
    return run_id


def _slug(text: object) -> str:
    """Replace everything but letters, digits, '.' and '-' (e.g. the ':' and ',' of a reward spec) by '-'."""
    return re.sub(r"[^A-Za-z0-9.-]+", "-", str(text)).strip("-") or "x"


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write ``path`` so that readers see either nothing or the complete file, even if we are killed midway.

    The bytes go to a hidden temp file in the same folder (``os.replace`` is only atomic within one filesystem),
    which is fsynced before the rename and the folder fsynced after it, so a power loss cannot reorder them.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(3)}")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)


def fsync_folder(folder: Path) -> None:
    """Make the renames and deletions in ``folder`` durable, so a power loss cannot reorder them."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open folders; its renames are still atomic
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def read_meta(run_dir: Path | str) -> dict[str, Any]:
    """The meta.json of one run folder."""
    return json.loads((Path(run_dir) / META_FILE).read_text())


class RunRecorder:
    """Buffers rows of one run and appends them to the store, one Parquet part per :meth:`flush`.

    Use as a context manager; call :meth:`flush` once at the end of every epoch. A clean exit flushes what is left.
    An exception discards the unflushed rows on purpose: they belong to an epoch that did not finish, and writing
    them would make :meth:`last_epoch` claim that epoch is done, so a resumed run would skip it.
    """

    def __init__(self, results_root: Path | str, run_id: str, meta: Mapping[str, Any]) -> None:
        self.run_id = check_run_id(run_id)
        self.run_dir = Path(results_root) / run_id
        self.records_dir = self.run_dir / RECORDS_DIR
        self._run = _run_columns(run_id, meta)
        self.records_dir.mkdir(parents=True, exist_ok=True)
        self._lock = writer_lock(self.run_dir, run_id)  # before anything is written or removed
        if (self.run_dir / META_FILE).exists():
            self.meta = read_meta(self.run_dir)
            _check_same_run(self.meta, self._run)
        else:
            self.meta = _complete_meta(run_id, meta)
            text = json.dumps(self.meta, indent=2, sort_keys=True, default=str).encode()
            atomic_write(self.run_dir / META_FILE, lambda handle: handle.write(text))
        self._remove_leftovers()
        parts = live_parts(self.records_dir)
        self._next_part = max((part_range(part)[1] for part in parts), default=-1) + 1
        self._last_epoch = max((_max_epoch(part) for part in parts), default=-1)
        self._rows: list[tuple[int, str, float, float]] = []
        self._pending: set[tuple[int, str]] = set()

    def last_epoch(self) -> int:
        """The highest epoch already flushed to disk, or -1 for a fresh run: train from ``last_epoch() + 1``."""
        return self._last_epoch

    def log(self, epoch: int, values: Mapping[str, float], *, prefix: str = "", timestamp: float | None = None) -> None:
        """Buffer one row per ``values`` item: ``key = prefix + name``, e.g. ``log(3, {"loss": 0.1}, prefix="train/")``.

        ``timestamp`` (unix seconds) defaults to now. Raises :class:`EpochAlreadyFlushedError` for an epoch at or
        before :meth:`last_epoch`, and ``ValueError`` for a (epoch, key) pair already buffered.
        """
        epoch = int(epoch)
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0 (epoch 0 = before training), got {epoch}")
        if epoch <= self._last_epoch:
            raise EpochAlreadyFlushedError(
                f"run {self.run_id}: epoch {epoch} is already flushed (last flushed epoch is {self._last_epoch}); "
                f"a resumed run must start at epoch {self._last_epoch + 1}"
            )
        now = time.time() if timestamp is None else float(timestamp)
        rows = []
        for name, value in values.items():
            key = f"{prefix}{name}"
            if not key or (epoch, key) in self._pending:
                raise ValueError(f"run {self.run_id}: key {key!r} is empty or already logged for epoch {epoch}")
            try:
                rows.append((epoch, key, float(value), now))
            except (TypeError, ValueError):
                raise TypeError(f"run {self.run_id}: value of {key!r} is not a number: {value!r}") from None
        self._rows.extend(rows)  # all or nothing: a bad value above leaves the buffer unchanged
        self._pending.update((epoch, key) for epoch, key, _, _ in rows)

    def flush(self) -> Path | None:
        """Append the buffered rows as one new part; returns its path (None when nothing was buffered)."""
        if not self._rows:
            return None
        epoch, key, value, stamp = zip(*self._rows)
        n = len(self._rows)
        columns = {name: [self._run[name]] * n for name in RUN_COLUMNS}
        columns.update(epoch=list(epoch), key=list(key), value=list(value), time=list(stamp))
        table = pa.table(columns, schema=SCHEMA)
        path = self.records_dir / f"part-{self._next_part:06d}.parquet"
        if path.exists():
            raise FileExistsError(f"{path} exists: is a second process writing run {self.run_id}?")
        atomic_write(path, lambda handle: pq.write_table(table, handle))
        self._next_part += 1
        self._last_epoch = max(self._last_epoch, max(epoch))
        self._rows.clear()
        self._pending.clear()
        return path

    def __enter__(self) -> "RunRecorder":
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.flush()
        elif self._rows:
            count = len(self._rows)
            logger.warning("run %s: discarding %d unflushed rows after %s", self.run_id, count, exc_type.__name__)

    def _remove_leftovers(self) -> None:
        """Temp files left by a killed writer or compaction of this run are garbage (never renamed into place), and
        so are parts that a compacted file already holds (a compaction killed before it deleted them)."""
        for stale in self.records_dir.glob(".part-*.tmp-*"):
            logger.info("run %s: removing %s left by an interrupted write", self.run_id, stale.name)
            stale.unlink(missing_ok=True)
        _remove_covered(self.records_dir)


def part_range(path: Path) -> tuple[int, int]:
    """The part numbers a records file holds: ``(n, n)`` for ``part-n``, ``(a, b)`` for a compacted ``part-a-b``."""
    match = _PART_NAME.match(path.name)
    if match is None:
        raise ValueError(f"{path} is not named like a records part (part-000000.parquet or part-000000-000009.parquet)")
    first = int(match.group(1))
    return first, int(match.group(2) or first)


def _scan(records_dir: Path) -> tuple[list[Path], list[Path]]:
    """``(live, covered)`` files of one run's records folder, each in part order. A file is covered when a compacted
    file spans its part range and more: its rows are in that file too, so readers must skip it."""
    ranges = {path: part_range(path) for path in records_dir.glob("part-*.parquet") if _PART_NAME.match(path.name)}
    spans = [r for r in ranges.values() if r[0] != r[1]]  # compacted files: few, so the check below stays linear
    live, covered = [], []
    for path, (first, last) in sorted(ranges.items(), key=lambda item: item[1]):
        inside = any(a <= first and last <= b and (a, b) != (first, last) for a, b in spans)
        (covered if inside else live).append(path)
    return live, covered


def live_parts(records_dir: Path | str) -> list[Path]:
    """The files of one run's records folder that together hold each of its rows exactly once, in part order."""
    return _scan(Path(records_dir))[0]


def _remove_covered(records_dir: Path) -> None:
    """Delete the parts that a compacted file already holds (what a finished or killed compaction leaves)."""
    covered = _scan(records_dir)[1]
    for path in covered:
        path.unlink(missing_ok=True)
    if covered:
        fsync_folder(records_dir)


def compact_run(run_dir: Path | str) -> Path | None:
    """Rewrite a run's records as one file ``part-<first>-<last>.parquet``; returns it (None without records).

    Steps, each safe to be killed after: (1) read every live part (:func:`live_parts`), an earlier compacted file
    included, and write them to a hidden temp file, fsynced; (2) publish it with one ``os.replace`` under a name that
    says which part numbers it holds -- from then on readers skip those parts; (3) delete the covered parts. Running
    it again finishes an interrupted compaction. Safe beside a recorder still appending to the run: parts flushed
    after step (1) are numbered above the compacted range and stay separate files.
    """
    records_dir = Path(run_dir) / RECORDS_DIR
    for stale in records_dir.glob(_STALE_COMPACTION):
        stale.unlink(missing_ok=True)
    live = live_parts(records_dir) if records_dir.is_dir() else []
    if len(live) > 1:
        first, last = part_range(live[0])[0], part_range(live[-1])[1]
        table = pa.concat_tables([pq.read_table(path).select(COLUMNS).cast(SCHEMA) for path in live])
        target = records_dir / f"part-{first:06d}-{last:06d}.parquet"
        atomic_write(target, lambda handle: pq.write_table(table, handle))
        live = [target]
    _remove_covered(records_dir)
    return live[0] if live else None


def _max_epoch(part: Path) -> int:
    epochs = pq.read_table(part, columns=["epoch"]).column("epoch").to_pylist()
    return max(epochs, default=-1)


def _run_columns(run_id: str, meta: Mapping[str, Any]) -> dict[str, Any]:
    """The row columns that are constant within a run, validated once so every part agrees."""
    missing = [name for name in ("method", "world", "reward", "seed") if name not in meta]
    if missing:
        raise ValueError(f"run {run_id}: meta must give {missing} (they become columns of every row)")
    if meta["method"] not in KNOWN_METHODS:
        raise ValueError(f"run {run_id}: method {meta['method']!r} is not one of {KNOWN_METHODS}")
    return {
        "run_id": run_id,
        "method": str(meta["method"]),
        "world": str(meta["world"]),
        "reward": str(meta["reward"]),
        "seed": int(meta["seed"]),
    }


# Settings that say how long a run goes, where it writes and how often it logs -- not what an epoch computes. Runs
# whose resolved configs agree on everything else are repeats of one setting and pool as seeds in the reports.
FINGERPRINT_IGNORES: tuple[str, ...] = (
    "seed", "run_id", "out", "ablation", "epochs", "budget_wall_s", "budget_gpu_hours", "budget_cpu_s",
    "eval_every", "eval_every_s", "checkpoint_every", "tensorboard", "wandb", "reward_workers",
)


def config_fingerprint(config: Mapping[str, Any]) -> str:
    """A short hash of a resolved run config without :data:`FINGERPRINT_IGNORES` (12 hex digits).

    Two runs with equal fingerprints differ only in seed, run id, output folder, label, length or logging, so their
    curves are seeds of one setting; any other difference (a learning rate, an evaluation set) changes it."""
    kept = {k: v for k, v in config.items() if k not in FINGERPRINT_IGNORES}
    text = json.dumps(kept, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _complete_meta(run_id: str, meta: Mapping[str, Any]) -> dict[str, Any]:
    """The caller's meta plus run id, start time and provenance (kept when the caller already gave them)."""
    now = time.time()
    full = dict(meta)
    full["run_id"] = run_id
    if "config" in full and "config_fingerprint" not in full:
        full["config_fingerprint"] = config_fingerprint(full["config"])
    full.setdefault("start_time", now)
    full.setdefault("start_time_iso", dt.datetime.fromtimestamp(now, dt.timezone.utc).isoformat())
    if "provenance" not in full:
        full["provenance"] = collect_provenance()
    return full


def _check_same_run(stored: Mapping[str, Any], run: Mapping[str, Any]) -> None:
    """Resuming under a run id written by a different method/reward/world/seed would mix two runs' rows."""
    for name in ("method", "world", "reward", "seed"):
        if str(stored.get(name)) != str(run[name]):
            raise ValueError(
                f"run {run['run_id']} exists with {name}={stored.get(name)!r}, not {run[name]!r}: use a new run id"
            )


def load_meta(results_root: Path | str) -> pd.DataFrame:
    """One row per run with the flat meta fields reports need (the full meta stays in each meta.json)."""
    rows = []
    for path in sorted(Path(results_root).glob(f"*/{META_FILE}")):
        meta = json.loads(path.read_text())
        provenance = meta.get("provenance") or {}
        rows.append(
            {
                "run_id": path.parent.name,
                "ablation": meta.get("ablation", (meta.get("config") or {}).get("ablation")),
                "config_fingerprint": meta.get("config_fingerprint")
                or (config_fingerprint(meta["config"]) if meta.get("config") else None),
                "start_time": meta.get("start_time"),
                "git_commit": provenance.get("git_commit"),
                "gpus": ", ".join(provenance.get("gpus") or []),
            }
        )
    return pd.DataFrame(rows, columns=["run_id", "ablation", "config_fingerprint", "start_time", "git_commit", "gpus"])


def load_results(results_root: Path | str, with_meta: bool = True) -> pd.DataFrame:
    """Every flushed row of every run under ``results_root`` in :data:`SCHEMA` (plus :data:`META_COLUMNS`).

    Reads the :func:`live_parts` of every run with one ``pd.read_parquet`` call, so each row comes once, also while
    a run is being compacted or after a compaction was killed. Hidden temp files of interrupted writes are never
    matched.
    """
    df = _read_parts(Path(results_root))
    if with_meta:
        meta = load_meta(results_root)[["run_id", *META_COLUMNS]]
        df = df.merge(meta, on="run_id", how="left")
    return df


def _read_parts(results_root: Path, attempts: int = 3) -> pd.DataFrame:
    """Every live part under ``results_root`` in one frame. A compaction that finishes between listing the parts and
    reading them deletes some of them: list again then (up to ``attempts`` times)."""
    attempt = 1
    while True:
        parts = [part for folder in sorted(results_root.glob(f"*/{RECORDS_DIR}")) for part in live_parts(folder)]
        try:
            return pd.read_parquet(parts) if parts else SCHEMA.empty_table().to_pandas()
        except FileNotFoundError:
            if attempt >= attempts:
                raise
            attempt += 1


def wide(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (run_id, epoch): the run columns, ``epoch``, then one column per key (NaN where not logged)."""
    run_columns = [c for c in df.columns if c not in ("epoch", "key", "value", "time")]
    if df.empty:
        return pd.DataFrame(columns=[*run_columns, "epoch"])
    values = df.groupby(["run_id", "epoch", "key"])["value"].last().unstack("key").reset_index()
    values.columns.name = None
    runs = df[run_columns].drop_duplicates("run_id")
    return runs.merge(values, on="run_id").sort_values(["run_id", "epoch"], ignore_index=True)


# ------------------------------------------------------------------------------------------------- command line
def find_runs(root: Path | str) -> list[Path]:
    """Every run folder (``meta.json`` beside ``records/``) under ``root``, at any depth."""
    folders = (path.parent for path in Path(root).rglob(RECORDS_DIR) if path.is_dir())
    return sorted(folder for folder in folders if (folder / META_FILE).is_file())


def build_parser() -> argparse.ArgumentParser:
    """The flags of ``python -m bench.records``."""
    from bench.cli import existing_dir

    parser = argparse.ArgumentParser(prog="python -m bench.records", description="Maintain the results store.")
    commands = parser.add_subparsers(dest="command", required=True)
    compact = commands.add_parser(
        "compact", help="Compact each run's Parquet parts into one file (what a finished run does by itself).",
        description="Compact each run's Parquet parts into one file, atomically: every row stays readable exactly "
                    "once (bench.records.load_results) at every moment, and an interrupted compaction is finished "
                    "by the next one.")
    compact.add_argument("runs", nargs="*", type=existing_dir, metavar="RUN",
                         help="Run folders, e.g. results/<run_id>.")
    compact.add_argument("--all", type=existing_dir, metavar="ROOT", help="Compact every run folder under ROOT.")
    return parser


def main(argv: list[str] | None = None) -> list[Path]:
    """``python -m bench.records compact RUN... | --all ROOT``; returns the compacted files."""
    parser = build_parser()
    args = parser.parse_args(argv)
    runs = [*args.runs, *(find_runs(args.all) if args.all else [])]
    if not runs:
        parser.error("compact: no run folder given or found: give run folders (results/<run_id>) or --all ROOT")
    for run in runs:
        if not (run / RECORDS_DIR).is_dir():
            parser.error(f"compact: {run} has no {RECORDS_DIR}/ folder: give run folders such as results/<run_id>")
    done = []
    for run in runs:
        before = len(list((run / RECORDS_DIR).glob("part-*.parquet")))
        path = compact_run(run)
        print(f"{run}: {before} files -> {path.name if path else 'no records'}")
        done += [path] if path else []
    return done


if __name__ == "__main__":
    main()
