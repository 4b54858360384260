"""The AWS Glue entry point of the Spark job (deploy/template.yaml, ``GlueBackfillJob``).

Glue runs this script with its own arguments (``--JOB_ID``, ``--TempDir``, ...) and the job's
default arguments; tripflow's are one string, ``--tripflow_args``: the flags and inputs of
``tripflow-spark kpis``. The ``tripflow`` binary arrives in the working directory through
``--extra-files``, the package through ``--extra-py-files`` (both built by
scripts/package-lambda.sh).
"""

from __future__ import annotations

import os
import shlex
import sys

from tripflow_spark.cli import main


def tripflow_args(argv: list[str]) -> list[str]:
    """The value of ``--tripflow_args``, split as a shell would."""
    for i, arg in enumerate(argv):
        if arg == "--tripflow_args" and i + 1 < len(argv):
            return shlex.split(argv[i + 1])
        if arg.startswith("--tripflow_args="):
            return shlex.split(arg.split("=", 1)[1])
    raise SystemExit("error: the Glue job needs --tripflow_args 'kpis --publish s3://... INPUT...'")


if __name__ == "__main__":
    args = tripflow_args(sys.argv[1:])
    if "--tripflow" not in args:
        args[1:1] = ["--tripflow", os.path.abspath("tripflow")]
    sys.exit(main(args))
