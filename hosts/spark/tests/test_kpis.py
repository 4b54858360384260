"""The Spark job against the replay, on real Spark in local mode: the same inputs give the same
KPI CSV, quarantine and accounting, byte for byte, however Spark splits the work."""

from __future__ import annotations

import gzip
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CASES, NYC, ROOT, Replayed, replay

from tripflow_spark import job, s3
from tripflow_spark.job import JobError, Options


def run_job(
    spark, binary: str, tmp: Path, inputs: list[str], page: bool = True, **kw
) -> tuple[job.Result, dict]:
    """Runs the job with every output written under `tmp`; returns the result and the files."""
    out = {
        "kpi_out": str(tmp / "spark-kpi.csv"),
        "quarantine": str(tmp / "spark-quarantine.ndjson"),
        "accounting": str(tmp / "spark-accounting.json"),
    }
    if page:
        out["report"] = str(tmp / "spark-report.html")
    opts = Options(inputs=inputs, binary=binary, **{**out, **kw})
    result = job.run(spark, opts, log=lambda _msg: None)
    files = {k: Path(v).read_bytes() for k, v in out.items()}
    return result, files


def assert_same(result: job.Result, files: dict, expected: Replayed) -> None:
    assert files["kpi_out"].decode() == expected.csv
    assert result.csv == expected.csv
    assert files["quarantine"] == expected.quarantine
    assert result.summary == expected.summary
    if expected.sweep is not None:
        assert result.sweep is not None
        assert result.sweep["orphans"] == expected.sweep["orphans"]
        assert result.sweep["still_open"] == expected.sweep["still_open"]


def test_nyc_sample_equals_the_replay(spark, binary, tmp_path):
    expected = replay(binary, tmp_path, [str(NYC)], zone="America/New_York")
    result, files = run_job(
        spark, binary, tmp_path, [str(NYC)], timezone="America/New_York", partitions=3
    )
    assert_same(result, files, expected)
    assert result.summary["records"] == 13_000 and result.summary["rejected"]["bad_fare"] == 10
    # The page: the same KPIs and accounting, rendered by the same component; only the host
    # and the accounting note differ.
    page = files["report"].decode()
    assert result.component_sha256 in page and "tripflow-spark" in page
    for row in expected.csv.splitlines()[1:4]:
        date = row.split(",")[0]
        assert date in page
    accounting = json.loads(files["accounting"])
    assert accounting["provenance"]["component_sha256"] == result.component_sha256
    assert accounting["summary"] == expected.summary


def case_inputs(case: Path) -> list[str]:
    return sorted(str(p) for p in case.glob("input*.ndjson"))


def quarantine_tsv(ndjson: bytes) -> str:
    """The conformance runner's quarantine.tsv from quarantine lines."""
    out = []
    for line in ndjson.splitlines():
        v = json.loads(line)
        out.append(f"{v['source']}:{v['line']}\t{v['reason']}\t{v['detail']}\n")
    return "".join(out)


@pytest.mark.parametrize("case", sorted(p.name for p in CASES.iterdir() if p.is_dir()))
def test_conformance_case(spark, binary, tmp_path, case):
    """Every conformance case through Spark: its expected KPI CSV, quarantine, counts, store
    totals and orphans, with all of its inputs in one job (one replay of them all)."""
    folder = CASES / case
    config = (
        json.loads((folder / "case.json").read_text()) if (folder / "case.json").exists() else {}
    )
    # Named as the runner names them: by file name, from a folder holding only the inputs.
    named = tmp_path / "inputs"
    named.mkdir()
    for p in case_inputs(folder):
        shutil.copy(p, named / Path(p).name)
    result, files = run_in(named, spark, binary, tmp_path, config)
    expected = folder / "expected"
    assert result.csv == (expected / "kpi.csv").read_text()
    assert quarantine_tsv(files["quarantine"]) == (expected / "quarantine.tsv").read_text()
    summary = json.loads((expected / "summary.json").read_text())
    assert result.summary["store"] == summary["store"]
    added: dict = {}
    for r in summary["replays"]:
        for k, v in r["counts"].items():
            if k == "rejected":
                for code, n in v.items():
                    added.setdefault("rejected", {})
                    added["rejected"][code] = added["rejected"].get(code, 0) + n
            else:
                added[k] = added.get(k, 0) + v
    got = {k: v for k, v in result.summary.items() if k != "store"}
    got["rejected"] = {k: v for k, v in got["rejected"].items() if v}
    added.setdefault("rejected", {})
    assert got == added
    if "sweep" in summary:
        assert result.sweep is not None
        assert result.sweep["orphans"] == summary["sweep"]["orphans"]
        assert result.sweep["still_open"] == summary["sweep"]["still_open"]


def run_in(folder: Path, spark, binary, tmp: Path, config: dict) -> tuple[job.Result, dict]:
    """Runs the job on a case's inputs named by their file names (as the conformance runner
    names them), from inside their folder."""
    import os

    cwd = os.getcwd()
    os.chdir(folder)
    try:
        # No page: some cases span centuries, more days than a page shows.
        return run_job(
            spark,
            binary,
            tmp,
            sorted(p.name for p in folder.iterdir()),
            page=False,
            timezone=config.get("timezone", "UTC"),
            partitions=4,
            kpi_from=config.get("kpi_from"),
            kpi_to=config.get("kpi_to"),
            orphans_older_than=config.get("sweep_older_than"),
        )
    finally:
        os.chdir(cwd)


@pytest.fixture(scope="module")
def two_million(tmp_path_factory) -> Path:
    """The 2M-event file of the benchmarks (scripts/peers/gen_events.py 1000000)."""
    out = tmp_path_factory.mktemp("gen") / "ev2m.ndjson"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "peers" / "gen_events.py"), "1000000", str(out)],
        check=True,
    )
    return out


def test_two_million_events_on_1_4_16_partitions(spark, binary, tmp_path, two_million):
    """The same answer whatever the partitions and splits, and the replay's."""
    expected = replay(binary, tmp_path, [str(two_million)])
    outputs = []
    for n in (1, 4, 16):
        d = tmp_path / f"p{n}"
        d.mkdir()
        result, files = run_job(
            spark, binary, d, [str(two_million)], partitions=n, split_bytes=48 << 20
        )
        outputs.append((files["kpi_out"], files["quarantine"], result.summary))
        assert_same(result, files, expected)
    assert outputs[0] == outputs[1] == outputs[2]
    assert expected.summary["store"]["completed"] == 1_000_000


def test_shuffled_duplicated_nyc_over_several_files(spark, binary, tmp_path):
    """The NYC events shuffled, with exact and conflicting copies, over four files, one of them
    gzip of two members, one with CRLF line ends and a byte-order mark, split into small
    ranges: the replay's answer, down to which copy is first."""
    lines = NYC.read_bytes().splitlines()
    rng = random.Random(7)
    extra = []
    for line in rng.sample(lines, 800):
        extra.append(line)  # an exact copy
    for line in rng.sample(lines, 200):
        if b'"fare":' in line:
            extra.append(line.replace(b'"fare":', b'"fare":1', 1))  # a conflicting copy
    events = lines + extra + [b"", b"not json", b"{" + b"x" * 200_000 + b"}"]
    rng.shuffle(events)
    parts = [events[i::4] for i in range(4)]
    paths = []
    for i, part in enumerate(parts):
        p = tmp_path / f"part-{i}.ndjson"
        if i == 1:
            body = b"\xef\xbb\xbf" + b"\r\n".join(part) + b"\r\n"
            p.write_bytes(body)
        elif i == 2:
            p = tmp_path / f"part-{i}.ndjson.gz"
            half = len(part) // 2
            p.write_bytes(
                gzip.compress(b"\n".join(part[:half]) + b"\n")
                + gzip.compress(b"\n".join(part[half:]) + b"\n")
            )
        else:
            p.write_bytes(b"\n".join(part) + b"\n")
        paths.append(str(p))
    expected = replay(binary, tmp_path, paths, zone="America/New_York", sweep="6h")
    assert expected.summary["rejected"]["conflicting_duplicate"] > 0
    assert expected.summary["duplicates"] >= 700
    result, files = run_job(
        spark,
        binary,
        tmp_path,
        paths,
        timezone="America/New_York",
        partitions=5,
        split_bytes=256 << 10,
        orphans_older_than="6h",
    )
    assert_same(result, files, expected)


def test_bad_inputs_fail_before_any_work(spark, binary, tmp_path):
    out = tmp_path / "k.csv"

    def fails(inputs: list[str], **kw) -> str:
        with pytest.raises(JobError) as e:
            job.run(
                spark,
                Options(inputs=inputs, binary=binary, kpi_out=str(out), **kw),
                log=lambda _m: None,
            )
        assert not out.exists()
        return str(e.value)

    assert "cannot read" in fails([str(tmp_path / "missing.ndjson")])
    said = fails(["s3://tripflow-no-such-bucket/x/"])
    assert "cannot list s3://tripflow-no-such-bucket/x/" in said and "NoSuchBucket" in said
    s3.client().create_bucket(Bucket="empty-archive")
    assert "no objects under this prefix" in fails(["s3://empty-archive/events/"])
    corrupt = tmp_path / "corrupt.ndjson.gz"
    body = bytearray(gzip.compress(NYC.read_bytes()))
    body[len(body) // 2] ^= 0xFF
    corrupt.write_bytes(bytes(body))
    said = fails([str(NYC), str(corrupt)])
    assert "corrupt.ndjson.gz" in said and "corrupt gzip" in said
    truncated = tmp_path / "truncated.ndjson.gz"
    truncated.write_bytes(gzip.compress(NYC.read_bytes())[:5000])
    assert "truncated.ndjson.gz" in fails([str(truncated)])
    assert "unknown time zone" in fails([str(NYC)], timezone="Mars/Olympus")
    # A component that is not one, and one that speaks another contract version.
    junk = tmp_path / "junk.wasm"
    junk.write_bytes(b"\0asm junk")
    assert "component cannot be used" in fails([str(NYC)], component=str(junk))
    wasm = tmp_path / "core.wasm"
    subprocess.run(
        [binary, "component", "--export-wasm", str(wasm)], check=True, capture_output=True
    )
    other = tmp_path / "other-contract.wasm"
    other.write_bytes(
        wasm.read_bytes().replace(b"tripflow:core/kpi@0.7.0", b"tripflow:core/kpi@9.9.9")
    )
    said = fails([str(NYC)], component=str(other))
    assert "component cannot be used" in said and "0.7.0" in said


def test_s3_archive_published_in_the_pipeline_layout(spark, binary, tmp_path, moto_s3):
    """Events from an S3 prefix (gzip), KPIs published where the pipeline publishes them; a
    second backfill merges its days into the combined file and keeps the others."""
    client = s3.client()
    client.create_bucket(Bucket="archive")
    client.create_bucket(Bucket="kpis")
    lines = NYC.read_bytes().splitlines(keepends=True)
    client.put_object(
        Bucket="archive",
        Key="events/2019-03/a.ndjson.gz",
        Body=gzip.compress(b"".join(lines[:7000])),
    )
    client.put_object(Bucket="archive", Key="events/2019-03/b.ndjson", Body=b"".join(lines[7000:]))
    # An empty object, and a job's leftovers that Spark-style listing leaves out.
    client.put_object(Bucket="archive", Key="events/2019-03/c-empty.ndjson", Body=b"")
    client.put_object(
        Bucket="archive", Key="events/2019-03/_temporary/0/part.ndjson", Body=b"not an event\n"
    )
    local = [tmp_path / "a.ndjson", tmp_path / "b.ndjson"]
    local[0].write_bytes(b"".join(lines[:7000]))
    local[1].write_bytes(b"".join(lines[7000:]))
    expected = replay(binary, tmp_path, [str(p) for p in local], zone="America/New_York")

    # A combined file published before, with a day outside the backfill's range.
    old = (
        "date,trip_count,total_fare,average_fare,min_fare,max_fare\n"
        "2018-12-31,1,5.00,5.00,5.00,5.00\n2019-03-10,1,1.00,1.00,1.00,1.00\n"
    )
    client.put_object(Bucket="kpis", Key="kpi_results/daily_trip_kpis.csv", Body=old.encode())
    result, files = run_job(
        spark,
        binary,
        tmp_path,
        ["s3://archive/events/2019-03/"],
        timezone="America/New_York",
        partitions=3,
        split_bytes=64 << 10,
        publish="s3://kpis/",
    )
    assert result.csv == expected.csv
    q = files["quarantine"].replace(b"s3://archive/events/2019-03/a.ndjson.gz", b"A")
    q = q.replace(b"s3://archive/events/2019-03/b.ndjson", b"B")
    e = expected.quarantine.replace(str(local[0]).encode(), b"A")
    assert q == e.replace(str(local[1]).encode(), b"B")
    combined = client.get_object(Bucket="kpis", Key="kpi_results/daily_trip_kpis.csv")
    body = combined["Body"].read().decode()
    assert body == old.splitlines(keepends=True)[
        0
    ] + "2018-12-31,1,5.00,5.00,5.00,5.00\n" + "".join(expected.csv.splitlines(keepends=True)[1:])
    assert combined["Metadata"][s3.COMPONENT_META] == result.component_sha256
    rows = expected.csv.splitlines(keepends=True)
    for row in rows[1:]:
        day = client.get_object(
            Bucket="kpis", Key=f"kpi_daily/date={row.split(',')[0]}/daily_trip_kpis.csv"
        )
        assert day["Body"].read().decode() == rows[0] + row
    page = client.get_object(Bucket="kpis", Key="kpi_results/daily_trip_kpis.html")
    assert result.component_sha256 in page["Body"].read().decode()
    accounting = json.loads(
        client.get_object(Bucket="kpis", Key="kpi_backfill/accounting.json")["Body"].read()
    )
    assert accounting["summary"] == result.summary


def test_table_export_local_and_on_s3_equals_the_replay_of_it(spark, binary, tmp_path, moto_s3):
    """A DynamoDB export of the pipeline's table (the NYC sample's items, fixtures/exports) is
    read as the events it stores, locally and from S3: the replay's answer, byte for byte, and
    the sample's KPIs. A data file the manifest lists but S3 lacks stops the job, named."""
    export = ROOT / "fixtures" / "exports" / "nyc-tlc-2019-03"
    zone = "America/New_York"
    expected = replay(binary, tmp_path, [str(export)], zone=zone)
    assert expected.csv == (CASES / "nyc-tlc-2019-03" / "expected" / "kpi.csv").read_text()
    result, files = run_job(spark, binary, tmp_path, [str(export)], timezone=zone, partitions=2)
    assert_same(result, files, expected)
    assert result.summary["records"] == 12_990

    client = s3.client()
    client.create_bucket(Bucket="exports")
    prefix = "tables/AWSDynamoDB/01700000000000-abcd1234"
    for path in sorted(p for p in export.rglob("*") if p.is_file()):
        rel = path.relative_to(export).as_posix()
        client.put_object(Bucket="exports", Key=f"{prefix}/{rel}", Body=path.read_bytes())
    result, _ = run_job(
        spark, binary, tmp_path, ["s3://exports/tables/"], timezone=zone, partitions=2
    )
    assert result.csv == expected.csv

    client.delete_object(Bucket="exports", Key=f"{prefix}/data/00001.json.gz")
    with pytest.raises(JobError) as e:
        job.run(
            spark,
            Options(inputs=["s3://exports/tables/"], binary=binary, timezone=zone),
            log=lambda _m: None,
        )
    assert f"s3://exports/{prefix}/data/00001.json.gz" in str(e.value)
    assert "missing" in str(e.value)


def test_command_line(binary, tmp_path):
    """The command a person runs: help, a bad flag, a missing Java."""
    env = {
        "PYTHONPATH": str(ROOT / "hosts" / "spark"),
        "PATH": "/usr/bin:/bin",
        "TRIPFLOW_BIN": binary,
    }
    cmd = [sys.executable, "-m", "tripflow_spark"]
    helped = subprocess.run([*cmd, "kpis", "--help"], capture_output=True, text=True, env=env)
    assert helped.returncode == 0 and "--partitions" in helped.stdout
    bad = subprocess.run(
        [*cmd, "kpis", "--partitions", "0", str(NYC)], capture_output=True, text=True, env=env
    )
    assert bad.returncode == 2 and "at least 1" in bad.stderr
    # A bad input is refused before Spark starts, naming it and what to do.
    missing = subprocess.run(
        [*cmd, "kpis", str(tmp_path / "nope.ndjson")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert (
        missing.returncode == 1
        and "cannot read" in missing.stderr
        and "nope.ndjson" in missing.stderr
    )
    assert "check the path" in missing.stderr
    no_java = subprocess.run(
        [*cmd, "kpis", str(NYC)],
        capture_output=True,
        text=True,
        env={**env, "PATH": str(tmp_path), "JAVA_HOME": ""},
    )
    assert no_java.returncode == 1 and "Java is missing" in no_java.stderr
    # An interpreter without pyspark (the machine's own, outside the venv).
    bare = shutil.which("python3", path="/usr/local/bin:/usr/bin")
    probe = subprocess.run([bare, "-c", "import pyspark"], capture_output=True) if bare else None
    if probe is not None and probe.returncode != 0:
        missing = subprocess.run(
            [bare, "-m", "tripflow_spark", "kpis", str(NYC)],
            capture_output=True,
            text=True,
            env=env,
        )
        assert missing.returncode == 1 and "pyspark is missing" in missing.stderr


def test_glue_entry_point_reads_its_job_arguments(monkeypatch, tmp_path):
    """Glue passes its own arguments around tripflow's; the entry script finds
    --tripflow_args and adds the binary Glue copied into the working directory."""
    sys.path.insert(0, str(ROOT / "hosts" / "spark"))
    import glue_job

    argv = [
        "--JOB_ID",
        "j_1",
        "--tripflow_args",
        "kpis --timezone 'America/New_York' s3://a/b/",
        "--TempDir",
        "s3://tmp/",
    ]
    assert glue_job.tripflow_args(argv) == ["kpis", "--timezone", "America/New_York", "s3://a/b/"]
    assert glue_job.tripflow_args(["--tripflow_args=kpis x"]) == ["kpis", "x"]
    with pytest.raises(SystemExit) as e:
        glue_job.tripflow_args(["--JOB_ID", "j_1"])
    assert "--tripflow_args" in str(e.value)


def test_an_input_that_breaks_off_fails_the_task(binary):
    """An S3 read that fails midway must not look like the end of the input to the worker."""
    from tripflow_spark.worker import Worker, WorkerError

    class BreaksOff:
        def __init__(self) -> None:
            self.calls = 0

        def read(self, _size: int = -1) -> bytes:
            self.calls += 1
            if self.calls == 1:
                return NYC.read_bytes()[:5000]
            raise OSError("Connection reset by peer")

    args = ["parse", "--input-index", "0", "--name", "x", "--buckets", "2", "-"]
    with pytest.raises(WorkerError) as e:
        list(Worker(binary).run(args, BreaksOff()))
    assert "reading the input of tripflow partition parse failed" in str(e.value)
    assert "Connection reset" in str(e.value)
