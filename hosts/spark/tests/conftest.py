"""Fixtures: one real Spark session in local mode for the whole run, the tripflow binary, the
replay to compare with, and moto's S3 server."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "hosts" / "spark"))

CASES = ROOT / "fixtures" / "cases"
NYC = CASES / "nyc-tlc-2019-03" / "input-1.ndjson"


@pytest.fixture(scope="session")
def binary() -> str:
    """The tripflow binary under test: $TRIPFLOW_BIN, else the debug build `cargo test` made."""
    path = os.environ.get("TRIPFLOW_BIN") or str(ROOT / "target" / "debug" / "tripflow")
    if not os.access(path, os.X_OK):
        pytest.fail(f"no tripflow binary at {path}: run `cargo build -p tripflow` first")
    return path


@pytest.fixture(scope="session")
def spark(moto_s3: str) -> Iterator[object]:
    """The session; started after moto, so that its Python workers see the S3 endpoint."""
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[2]")
        .appName("tripflow-spark-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "4")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@dataclass
class Replayed:
    """What `tripflow replay` (and `kpi`, `sweep`) made of some inputs."""

    csv: str
    quarantine: bytes
    summary: dict
    report: str
    sweep: dict | None


def replay(
    binary: str,
    tmp: Path,
    inputs: list[str],
    zone: str = "UTC",
    kpi_from: str | None = None,
    kpi_to: str | None = None,
    sweep: str | None = None,
) -> Replayed:
    """Replays `inputs` with the CLI into a fresh store, then `kpi` (and `sweep`)."""
    state = tmp / "state"
    q = tmp / "replay-quarantine.ndjson"
    report = tmp / "replay-report.html"
    done = subprocess.run(
        [
            binary,
            "replay",
            "--state",
            str(state),
            "--timezone",
            zone,
            "--quarantine",
            str(q),
            "--report",
            str(report),
            "--json",
            *inputs,
        ],
        capture_output=True,
        check=True,
    )
    summary = json.loads(done.stdout)
    swept = None
    if sweep is not None:
        out = subprocess.run(
            [binary, "sweep", "--state", str(state), "--older-than", sweep, "--json"],
            capture_output=True,
            check=True,
        )
        swept = json.loads(out.stdout)
        summary["store"]["orphaned"] = swept["orphaned_total"]
    kpi = [binary, "kpi", "--state", str(state), "--timezone", zone, "--out", "-"]
    if kpi_from:
        kpi += ["--from", kpi_from]
    if kpi_to:
        kpi += ["--to", kpi_to]
    csv = subprocess.run(kpi, capture_output=True, check=True).stdout.decode()
    return Replayed(csv, q.read_bytes(), summary, report.read_text(), swept)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[str]:
    """moto's server (installed by scripts/install-local-aws.sh) as the S3 endpoint."""
    server = ROOT / "tools" / "local-aws" / "venv" / "bin" / "moto_server"
    if not server.exists():
        pytest.fail("moto is not installed: run scripts/install-local-aws.sh")
    port = free_port()
    proc = subprocess.Popen(
        [str(server), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ENDPOINT_URL": url,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.2)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
