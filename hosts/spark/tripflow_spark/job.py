"""The ``kpis`` job: an archive of NDJSON trip events → the replay's KPI CSV, quarantine,
accounting and report page, on Spark.

Stages (Spark runs, retries and shuffles each; the ``tripflow`` binary decides in each):

1. **scan** — one task per split: count its line feeds (plain) or check every gzip member.
2. **parse** — one task per split: ``tripflow partition parse`` → events by bucket of trip id,
   rejects, counts.
3. **shuffle** — ``partitionBy(N)`` on the bucket: every event of a trip meets in one partition.
4. **resolve** — one task per bucket: ``tripflow partition resolve`` → decisions in input order,
   KPI day totals, open trips, rejects.
5. **sweep** (with ``--orphans-older-than``) — per bucket, against the newest event time of the
   whole input.
6. **finish** — on the driver: ``tripflow partition finish`` merges the day totals and renders
   the CSV and the page; the quarantine lines are sorted by Spark into input order.
"""

from __future__ import annotations

import functools
import json
import os
import stat
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from tripflow_spark import __version__, inputs, s3
from tripflow_spark.worker import (
    NAMES,
    OPEN,
    REJECTS,
    SWEPT,
    TALLY,
    TOTALS,
    Worker,
    WorkerError,
    bucket_of,
    frame,
    payload_of,
    rejects,
    tag_of,
)

#: Plain inputs are cut into splits of this many bytes.
DEFAULT_SPLIT_BYTES = 64 << 20
HOST = f"tripflow-spark {__version__}"


@dataclass
class Options:
    """What ``kpis`` was asked for (see :mod:`tripflow_spark.cli`)."""

    inputs: list[str]
    timezone: str = "UTC"
    partitions: int = 8
    kpi_out: str | None = None
    quarantine: str | None = None
    report: str | None = None
    accounting: str | None = None
    publish: str | None = None
    kpi_from: str | None = None
    kpi_to: str | None = None
    max_clock_skew: str = "1h"
    orphans_older_than: str | None = None
    arrival_ns: int | None = None
    split_bytes: int = DEFAULT_SPLIT_BYTES
    binary: str = "tripflow"
    component: str | None = None


@dataclass
class Result:
    """What the job produced."""

    summary: dict[str, Any]
    csv: str
    component_sha256: str
    contract: str
    sweep: dict[str, Any] | None = None
    published: list[str] = field(default_factory=list)


class JobError(Exception):
    """A failure that stops the job before it writes anything; the message says what to do."""


def describe_component(worker: Worker) -> tuple[str, str]:
    """The component's contract and sha256 (``tripflow component``): loading it checks that it
    speaks the contract this binary does."""
    try:
        text = worker.output(["component"])
    except WorkerError as e:
        raise JobError(
            f"the component cannot be used: {e}\n"
            "pass --component with a tripflow_component.wasm built by the same checkout as the "
            "tripflow binary (`tripflow component --export-wasm FILE`)"
        ) from e
    contract, sha = "", ""
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        value = value.strip()
        if key == "package":
            contract = value
        elif key == "runs" and "sha256:" in value:
            sha = value.split("sha256:", 1)[1].split()[0].rstrip(")")
    return contract, sha


@dataclass(frozen=True)
class Checked:
    """What :func:`check` found: the component and the inputs, in order."""

    contract: str
    sha256: str
    files: list[inputs.InputFile]


def check(opts: Options) -> Checked:
    """Everything that can be checked before Spark starts: the component loads and speaks this
    binary's contract, the outputs can be written, every input can be read, the time zone and
    the days are valid. Raises :class:`JobError`, having done no work."""
    local = Worker(opts.binary, opts.component)
    contract, sha = describe_component(local)
    check_outputs(opts)

    def export_files(directory: str) -> list[tuple[str, str]]:
        try:
            text = local.output(["partition", "export-files", directory])
        except WorkerError as e:
            raise inputs.InputError(str(e)) from e
        return [
            (line["path"], json.dumps(line["entry"])) for line in map(json.loads, text.splitlines())
        ]

    try:
        files = inputs.expand(opts.inputs, export_files)
    except inputs.InputError as e:
        raise JobError(str(e)) from e
    try:
        local.output(
            [
                "partition",
                "finish",
                "--timezone",
                opts.timezone,
                "--quarantine",
                os.devnull,
                *range_args(opts),
            ],
            stdin=b"",
        )
    except WorkerError as e:
        raise JobError(str(e)) from e
    return Checked(contract, sha, files)


def run(spark: Any, opts: Options, log: Any = None, checked: Checked | None = None) -> Result:
    """Runs the job on ``spark``; writes the outputs ``opts`` names. Raises :class:`JobError`
    (nothing written) for bad input found before the work starts, and for a failed stage."""
    log = log or (lambda msg: print(f"tripflow-spark: {msg}", file=sys.stderr))
    started = time.monotonic()
    sc = spark.sparkContext
    local = Worker(opts.binary, opts.component)
    checked = checked or check(opts)
    contract, sha, files = checked.contract, checked.sha256, checked.files
    log(f"component sha256 {sha} ({contract}), binary {opts.binary}")
    splits = inputs.plan(files, opts.split_bytes)
    log(f"{len(files)} input(s), {len(splits)} split(s), {opts.partitions} partition(s)")

    shipped = ship(sc, opts)
    names = [f.name for f in files]
    n = opts.partitions
    arrival = opts.arrival_ns if opts.arrival_ns is not None else time.time_ns()

    # 1. scan: line feeds before each split, and whole gzip members, before any work.
    scanned = sc.parallelize(splits, max(1, len(splits))).map(inputs.scan).collect()
    errors = [s.error for s in scanned if s.error]
    if errors:
        raise JobError(errors[0])
    scan_done = time.monotonic()
    before: dict[tuple[int, int], int] = {}
    running: dict[int, int] = {}
    for s in scanned:
        i = s.split.input.index
        before[(i, s.split.number)] = running.get(i, 0)
        running[i] = running.get(i, 0) + s.newlines
    jobs = [(s, before[(s.input.index, s.number)], k % n) for k, s in enumerate(splits)]

    # 2.-4. parse, shuffle by bucket, resolve.
    names_frame = frame(NAMES, 0, json.dumps(names).encode())
    resolve_args = [
        "resolve",
        "--timezone",
        opts.timezone,
        "--arrival-ns",
        str(arrival),
        "--max-clock-skew",
        opts.max_clock_skew,
    ]
    parsed = sc.parallelize(jobs, max(1, len(jobs))).mapPartitions(
        lambda it: parse_task(it, shipped, n)
    )
    resolved = (
        parsed.partitionBy(n, lambda b: b)
        .mapPartitions(lambda it: resolve_task(it, shipped, names_frame, resolve_args))
        .persist(storage_level())
    )
    try:
        small = resolved.filter(lambda kv: kv[0] == "f").map(lambda kv: kv[1]).collect()
        resolve_done = time.monotonic()

        # 5. sweep, against the newest event time of everything.
        sweep_frames: list[bytes] = []
        if opts.orphans_older_than is not None:
            newest = [
                json.loads(payload_of(f)).get("newest_ns") for f in small if tag_of(f) == TALLY
            ]
            newest = [v for v in newest if v is not None]
            if newest:
                sweep_args = [
                    "sweep",
                    "--newest-ns",
                    str(max(newest)),
                    "--older-than",
                    opts.orphans_older_than,
                ]
                sweep_frames = (
                    resolved.filter(lambda kv: kv[0] == "o")
                    .map(lambda kv: kv[1])
                    .mapPartitions(lambda it: sweep_task(it, shipped, sweep_args))
                    .collect()
                )

        # 6. the quarantine in input order, then finish on the driver.
        with tempfile.TemporaryDirectory(prefix="tripflow-spark-") as tmp:
            qpath = opts.quarantine or os.path.join(tmp, "quarantine.ndjson")
            count = rejected(small)
            with open(qpath, "wb") as q:
                if count:
                    ordered = (
                        resolved.filter(lambda kv: kv[0] == "q")
                        .map(lambda kv: kv[1])
                        .sortByKey(numPartitions=max(1, min(n, count // 100_000)))
                        .values()
                    )
                    for line in ordered.toLocalIterator():
                        q.write(line)
            result = finish(local, opts, small + sweep_frames, qpath, names, sha, contract, tmp)
            end = time.monotonic()
            log(
                f"done in {end - started:.2f} s: scan {scan_done - started:.2f} s, parse + "
                f"shuffle + resolve {resolve_done - scan_done:.2f} s, sweep, quarantine and "
                f"finish {end - resolve_done:.2f} s; {result.summary['records']} records"
            )
            return result
    except Exception as e:
        raise JobError(task_failure(e)) from e
    finally:
        resolved.unpersist()


def finish(
    local: Worker,
    opts: Options,
    frames: list[bytes],
    qpath: str,
    names: list[str],
    sha: str,
    contract: str,
    tmp: str,
) -> Result:
    """Adds everything up with ``tripflow partition finish`` and publishes."""
    kpi_path = opts.kpi_out or os.path.join(tmp, "kpi.csv")
    sweep_path = os.path.join(tmp, "sweep.json")
    args = [
        "partition",
        "finish",
        "--timezone",
        opts.timezone,
        "--quarantine",
        qpath,
        "--kpi-out",
        kpi_path,
        "--host",
        HOST,
        *range_args(opts),
    ]
    if opts.report:
        args += ["--report", opts.report]
    if opts.orphans_older_than is not None:
        args += ["--swept", "--sweep-out", sweep_path]
    layout = None
    previous = None
    if opts.publish:
        layout = os.path.join(tmp, "layout")
        args += ["--layout", layout]
        previous = previous_combined(opts.publish)
        if previous is not None:
            ppath = os.path.join(tmp, "previous.csv")
            with open(ppath, "w", encoding="utf-8") as f:
                f.write(previous[0])
            args += ["--previous-combined", ppath]
    for name in names:
        args += ["--input", name]
    summary = json.loads(local.output(args, stdin=b"".join(frames)))
    with open(kpi_path, encoding="utf-8") as f:
        csv = f.read()
    sweep = None
    if opts.orphans_older_than is not None and os.path.exists(sweep_path):
        with open(sweep_path, encoding="utf-8") as f:
            sweep = json.load(f)
    result = Result(summary, csv, sha, contract, sweep)
    accounting = {
        "summary": summary,
        "sweep": sweep,
        "provenance": {
            "host": HOST,
            "component_sha256": sha,
            "contract": contract,
            "timezone": opts.timezone,
            "inputs": names,
            "partitions": opts.partitions,
        },
    }
    if opts.accounting:
        with open(opts.accounting, "w", encoding="utf-8") as f:
            json.dump(accounting, f, indent=2)
            f.write("\n")
    if opts.publish and layout is not None:
        result.published = publish(
            opts.publish, layout, qpath, accounting, sha, previous[1] if previous else None
        )
    return result


def rejected(frames: list[bytes]) -> int:
    """How many records the tallies among ``frames`` rejected (so that an input without rejects
    skips the sort)."""
    return sum(
        sum(json.loads(payload_of(f))["rejected"].values()) for f in frames if tag_of(f) == TALLY
    )


def range_args(opts: Options) -> list[str]:
    """``--from``/``--to`` for the worker."""
    out = []
    if opts.kpi_from:
        out += ["--from", opts.kpi_from]
    if opts.kpi_to:
        out += ["--to", opts.kpi_to]
    return out


def check_outputs(opts: Options) -> None:
    """Every local output's directory exists, before any work."""
    for path in (opts.kpi_out, opts.quarantine, opts.report, opts.accounting):
        if path is None:
            continue
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
            raise JobError(f"cannot write {path}: create {parent} or pick another path")


def ship(sc: Any, opts: Options) -> Shipped:
    """Sends the binary, the component and this package to every executor."""
    sc.addFile(opts.binary)
    if opts.component:
        sc.addFile(opts.component)
    archive = package_zip()
    sc.addPyFile(archive)
    return Shipped(
        os.path.basename(opts.binary),
        os.path.basename(opts.component) if opts.component else None,
    )


@functools.cache
def package_zip() -> str:
    """This package as a zip for the executors, made once per driver process."""
    package = os.path.dirname(os.path.abspath(__file__))
    archive = os.path.join(tempfile.mkdtemp(prefix="tripflow-spark-py-"), "tripflow_spark.zip")
    with zipfile.ZipFile(archive, "w") as z:
        for name in sorted(os.listdir(package)):
            if name.endswith(".py"):
                z.write(os.path.join(package, name), f"tripflow_spark/{name}")
    return archive


def storage_level() -> Any:
    from pyspark import StorageLevel

    return StorageLevel.MEMORY_AND_DISK


@dataclass(frozen=True)
class Shipped:
    """The names under which :func:`ship` sent the binary and the component."""

    binary: str
    component: str | None


def executor_worker(shipped: Shipped) -> Worker:
    """The binary and component Spark shipped to this executor."""
    from pyspark import SparkFiles

    binary = SparkFiles.get(shipped.binary)
    mode = os.stat(binary).st_mode
    if not mode & stat.S_IXUSR:
        os.chmod(binary, mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    component = shipped.component
    # The binary's own cache (~/.cache/tripflow) outlives the application, so a node compiles
    # the component once, not once per job; where home is not writable, the executor's files.
    home = os.path.expanduser("~")
    cache = None
    if not os.access(home, os.W_OK):
        cache = os.path.join(SparkFiles.getRootDirectory(), "tripflow-cache")
    return Worker(binary, SparkFiles.get(component) if component else None, cache)


def parse_task(
    jobs: Iterator[tuple[inputs.Split, int, int]], shipped: Shipped, buckets: int
) -> Iterator[Any]:
    """Parses splits; yields ``(bucket, frame)``."""
    worker = executor_worker(shipped)
    for split, newlines, home in jobs:
        f = split.input
        args = [
            "parse",
            "--input-index",
            str(f.index),
            "--name",
            f.name,
            "--start",
            str(split.start),
            "--newlines-before",
            str(newlines),
            "--buckets",
            str(buckets),
            "--home",
            str(home),
        ]
        if split.end is not None:
            args += ["--end", str(split.end)]
        if f.export_entry is not None:
            args += ["--export-entry", f.export_entry]
        if f.size == 0:
            # Nothing to read (and S3 refuses a range of an empty object).
            for fr in worker.run([*args, "-"], [b""]):
                yield bucket_of(fr), fr
        elif f.uri.startswith("s3://"):
            body = inputs.open_range(f.uri, max(split.start - 1, 0), None)
            with body:
                for fr in worker.run([*args, "-"], body):
                    yield bucket_of(fr), fr
        else:
            for fr in worker.run([*args, f.uri], None):
                yield bucket_of(fr), fr


def resolve_task(
    items: Iterator[tuple[int, bytes]], shipped: Shipped, names_frame: bytes, args: list[str]
) -> Iterator[tuple[str, Any]]:
    """Resolves one bucket; yields ``("q", ((input, line), quarantine line))`` per reject,
    ``("o", frame)`` for open trips and ``("f", frame)`` for day totals and tallies."""
    frames = [fr for _, fr in items]
    if not frames:
        return
    worker = executor_worker(shipped)
    for fr in worker.run(args, [names_frame, *frames]):
        tag = tag_of(fr)
        if tag == REJECTS:
            for key, line in rejects(fr):
                yield "q", (key, line)
        elif tag == OPEN:
            yield "o", fr
        elif tag in (TALLY, TOTALS):
            yield "f", fr


def sweep_task(frames: Iterator[bytes], shipped: Shipped, args: list[str]) -> Iterator[bytes]:
    """Sweeps the open trips of some buckets; yields one frame."""
    batch = list(frames)
    if not batch:
        return
    worker = executor_worker(shipped)
    yield from (fr for fr in worker.run(args, batch) if tag_of(fr) == SWEPT)


def previous_combined(prefix: str) -> tuple[str, str | None] | None:
    """The combined CSV already published under ``prefix`` (and its ETag), if any."""
    key = join(prefix, "kpi_results/daily_trip_kpis.csv")
    if key.startswith("s3://"):
        got = s3.get_text(key)
        return (got[0], got[1]) if got else None
    if os.path.exists(key):
        with open(key, encoding="utf-8") as f:
            return f.read(), None
    return None


def join(prefix: str, rel: str) -> str:
    return prefix.rstrip("/") + "/" + rel


def publish(
    prefix: str,
    layout: str,
    qpath: str,
    accounting: dict[str, Any],
    sha: str,
    etag: str | None,
) -> list[str]:
    """Copies the pipeline's layout under ``prefix`` (S3 or a directory): the days first, the
    combined CSV last and only if it is still the version merged (If-Match), then its page,
    the quarantine and the accounting under ``kpi_backfill/``."""
    written = []
    files = []
    for root, _, names in os.walk(layout):
        for name in names:
            path = os.path.join(root, name)
            files.append(os.path.relpath(path, layout))
    combined = "kpi_results/daily_trip_kpis.csv"
    daily = sorted(f for f in files if f.startswith("kpi_daily/"))
    extra = {
        "kpi_backfill/quarantine.ndjson": qpath,
    }
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as a:
        json.dump(accounting, a, indent=2)
        a.write("\n")
    extra["kpi_backfill/accounting.json"] = a.name
    order = [*daily, combined, "kpi_results/daily_trip_kpis.html"]
    for rel in order:
        src = os.path.join(layout, rel)
        written.append(
            copy(src, join(prefix, rel), sha, etag if rel == combined else None, rel == combined)
        )
    for rel, src in extra.items():
        written.append(copy(src, join(prefix, rel), sha, None, False))
    os.unlink(a.name)
    return written


def copy(src: str, dest: str, sha: str, etag: str | None, conditional: bool) -> str:
    kind = {
        ".csv": "text/csv; charset=utf-8",
        ".html": "text/html; charset=utf-8",
        ".json": "application/json",
    }.get(os.path.splitext(src)[1], "application/x-ndjson")
    with open(src, "rb") as f:
        body = f.read()
    if dest.startswith("s3://"):
        from botocore.exceptions import ClientError

        try:
            s3.put(
                dest,
                body,
                kind,
                sha,
                if_match=etag if conditional else None,
                if_none_match=conditional and etag is None,
            )
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code")
            if code in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                raise JobError(
                    f"{dest} changed while this job merged its days into it (a KPI run of the "
                    "pipeline wrote it meanwhile); nothing was lost: run the job again"
                ) from e
            raise
    else:
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with open(dest, "wb") as f:
            f.write(body)
    return dest


def task_failure(e: Exception) -> str:
    """What a failed Spark stage says, without the JVM's stack: the worker's own message."""
    text = str(e)
    for marker in ("WorkerError: ", "InputError: ", "JobError: "):
        if marker in text:
            said = text.rsplit(marker, 1)[1]
            lines = []
            for line in said.splitlines():
                if line.startswith(("\tat ", "\n", "Caused by", "Driver stacktrace")) or (
                    line.strip().startswith("at ")
                ):
                    break
                lines.append(line)
            return "\n".join(lines).strip()
    return text
