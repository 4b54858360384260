"""``tripflow-spark kpis``: the command line of the Spark job (``scripts/tripflow-spark`` on one
machine, ``spark-submit …/tripflow_spark/cli.py kpis …`` or an AWS Glue job on a cluster)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from typing import Any

from tripflow_spark import __version__

EPILOG = """\
examples:
  scripts/tripflow-spark kpis --timezone America/New_York --partitions 8 \\
      --kpi-out kpis.csv --quarantine rejected.ndjson --report report.html \\
      events/2019-*.ndjson.gz
  spark-submit hosts/spark/tripflow_spark/cli.py kpis --tripflow ./tripflow \\
      --publish s3://my-kpi-bucket/ s3://my-archive/events/2024/

The outputs are byte for byte those of `tripflow replay FILES... && tripflow kpi` over the
same inputs in the same order (the summary is `tripflow replay --json`'s).
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tripflow-spark",
        description="tripflow on Apache Spark: exact daily fare KPIs of an archive of trip "
        "events, decided by the same core component as the replay and the AWS pipeline.",
    )
    p.add_argument("--version", action="version", version=f"tripflow-spark {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    k = sub.add_parser(
        "kpis",
        help="compute the KPIs, quarantine, accounting and report page of NDJSON event files",
        description="Compute the KPIs of NDJSON event files (plain or gzip; local paths, "
        "directories or s3:// prefixes) on Spark, exactly as a replay of them would.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    k.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="event files, directories of them, or s3:// objects and prefixes, "
        "read in the order given (a directory or prefix by name)",
    )
    k.add_argument(
        "--timezone",
        default="UTC",
        metavar="ZONE",
        help="IANA time zone whose calendar dates are the KPI days (default UTC)",
    )
    k.add_argument(
        "--partitions",
        type=positive,
        default=None,
        metavar="N",
        help="shuffle partitions: the trips are spread over N resolve tasks; each "
        "holds about 1/N of the accepted events in memory (default: 2 per core "
        "of the cluster)",
    )
    k.add_argument("--kpi-out", metavar="FILE", help="write the KPI CSV here")
    k.add_argument(
        "--quarantine",
        metavar="FILE",
        help="write the rejected records (reason, detail, original bytes) as NDJSON",
    )
    k.add_argument("--report", metavar="FILE.html", help="write the report page here")
    k.add_argument(
        "--accounting",
        metavar="FILE.json",
        help="write the accounting and the provenance (component sha256) as JSON",
    )
    k.add_argument(
        "--publish",
        metavar="PREFIX",
        help="publish in the pipeline's layout under an s3:// prefix or a "
        "directory: kpi_daily/date=.../daily_trip_kpis.csv, the combined "
        "kpi_results/daily_trip_kpis.csv (days outside this job's kept) and its page",
    )
    k.add_argument("--from", dest="kpi_from", metavar="DATE", help="first KPI day, YYYY-MM-DD")
    k.add_argument("--to", dest="kpi_to", metavar="DATE", help="last KPI day, YYYY-MM-DD")
    k.add_argument(
        "--max-clock-skew",
        default="1h",
        metavar="DURATION",
        help="as `tripflow replay --max-clock-skew` (default 1h); every event's "
        "arrival is the job's start",
    )
    k.add_argument(
        "--orphans-older-than",
        metavar="DURATION",
        help="afterwards, mark open trips this much older than the newest event as "
        "orphans, as `tripflow sweep --older-than` after a replay",
    )
    k.add_argument("--json", action="store_true", help="print the summary as JSON")
    k.add_argument(
        "--tripflow",
        metavar="PATH",
        help="the tripflow binary (default: $TRIPFLOW_BIN, else tripflow on PATH)",
    )
    k.add_argument(
        "--component",
        metavar="FILE.wasm",
        help="run this core component instead of the one built into the binary",
    )
    k.add_argument(
        "--master",
        metavar="URL",
        help="Spark master when not under spark-submit (default local[*])",
    )
    k.add_argument(
        "--split-size",
        type=size,
        default=None,
        metavar="BYTES",
        help="cut plain inputs into splits of this size (default 64m)",
    )
    k.add_argument("--arrival-ns", type=int, default=None, help=argparse.SUPPRESS)
    return p


def positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return n


def size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower()
    mult = units.get(t[-1:], 1)
    try:
        n = int(t[:-1] if t[-1:] in units else t) * mult
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size: use e.g. 64m, 512k or 1g")
    return n


def check_java() -> str | None:
    """Why Spark cannot start here, if it cannot."""
    java = (
        os.path.join(os.environ["JAVA_HOME"], "bin", "java")
        if os.environ.get("JAVA_HOME")
        else shutil.which("java")
    )
    if not java or not os.access(java, os.X_OK):
        return (
            "Java is missing: Spark 3.5 needs Java 8, 11 or 17 on the PATH or in JAVA_HOME "
            "(e.g. `apt-get install openjdk-17-jre-headless`)"
        )
    try:
        subprocess.run([java, "-version"], capture_output=True, check=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        return f"{java} does not run ({e}): install Java 17 or point JAVA_HOME at one"
    return None


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        import pyspark  # noqa: F401
    except ImportError:
        print(
            "error: pyspark is missing: run scripts/tripflow-spark (it installs the pinned "
            "pyspark into target/), or `pip install -r hosts/spark/requirements.txt`",
            file=sys.stderr,
        )
        return 1
    from tripflow_spark.job import DEFAULT_SPLIT_BYTES, JobError, Options, check, run
    from tripflow_spark.worker import WorkerError, find_binary

    try:
        binary = find_binary(args.tripflow)
        component = None
        if args.component:
            if not os.path.isfile(args.component):
                raise WorkerError(
                    f"cannot read the component {args.component}: pass the path of a "
                    "tripflow_component.wasm (`tripflow component --export-wasm FILE`)"
                )
            component = os.path.abspath(args.component)
    except WorkerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    from pyspark import SparkConf

    under_submit = SparkConf().contains("spark.master")
    if not under_submit:
        why = check_java()
        if why:
            print(f"error: {why}", file=sys.stderr)
            return 1
    opts = Options(
        inputs=args.inputs,
        timezone=args.timezone,
        partitions=args.partitions or 0,
        kpi_out=args.kpi_out,
        quarantine=args.quarantine,
        report=args.report,
        accounting=args.accounting,
        publish=args.publish,
        kpi_from=args.kpi_from,
        kpi_to=args.kpi_to,
        max_clock_skew=args.max_clock_skew,
        orphans_older_than=args.orphans_older_than,
        arrival_ns=args.arrival_ns,
        split_bytes=args.split_size or DEFAULT_SPLIT_BYTES,
        binary=binary,
        component=component,
    )
    # Bad input is found in a second, before Spark's start.
    try:
        checked = check(opts)
    except JobError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    spark = session(args.master if not under_submit else None)
    try:
        if not opts.partitions:
            opts.partitions = max(2, 2 * spark.sparkContext.defaultParallelism)
        try:
            result = run(spark, opts, checked=checked)
        except JobError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        if args.json:
            print(json.dumps(result.summary, indent=2))
        else:
            print_summary(result.summary, args.inputs, result.component_sha256)
            for dest in result.published:
                print(f"published {dest}")
        return 0
    finally:
        spark.stop()


def session(master: str | None) -> Any:
    """A Spark session: under spark-submit (or Glue) the one it configured, else local mode."""
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName("tripflow-kpis")
    if master is not None or not os.environ.get("SPARK_MASTER"):
        builder = builder.master(master or os.environ.get("SPARK_MASTER") or "local[*]")
        builder = builder.config("spark.ui.enabled", "false")
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def print_summary(s: dict[str, Any], inputs: list[str], sha: str) -> None:
    """The summary as the replay prints it."""
    rejected = {k: v for k, v in s["rejected"].items() if v}
    closed = s["completed"] + s["invalid"] + s["no_fare"]
    t = s["store"]
    print(f"computed on Spark from {len(inputs)} input(s): {', '.join(inputs)}")
    print(f"  events read       {s['records']:>10}  ({s['blank_lines']} blank lines skipped)")
    print(f"  stored            {s['stored']:>10}")
    print(f"  duplicates        {s['duplicates']:>10}")
    if s["skewed"]:
        print(f"  clock ahead       {s['skewed']:>10}  (stored; not used as the sweep's clock)")
    print(f"  rejected          {sum(rejected.values()):>10}")
    for code, n in sorted(rejected.items()):
        print(f"    {code:<20}{n:>8}")
    print(
        f"  trips closed      {closed:>10}  (completed {s['completed']}, invalid "
        f"{s['invalid']}, no_fare {s['no_fare']})"
    )
    print(f"  open trips        {t['open']:>10}  ({t['orphaned']} orphaned)")
    print(f"  component         sha256 {sha}")


if __name__ == "__main__":
    sys.exit(main())
