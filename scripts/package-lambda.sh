#!/usr/bin/env bash
# Builds the artifacts deploy/template.yaml deploys, from one checkout so that they run the same
# component bytes:
#   dist/tripflow-lambda.zip   the Lambda functions:
#     bootstrap        the four functions (Handler picks one), release build
#     tripflow.cwasm   the core component precompiled for the bootstrap's wasmtime (cold start)
#     tripflow.wasm    the same component (fallback, and its sha256 is the one logged at start)
#   dist/glue/                 the Glue backfill job (GlueBackfill=enabled), to copy to the
#                              artifacts prefix: `aws s3 cp --recursive dist/glue s3://BUCKET/PREFIX`
#     tripflow               the CLI, whose `tripflow partition` stages are the Spark workers
#     tripflow_spark.zip     the Spark host (--extra-py-files)
#     glue_job.py            the job's script
# for x86_64 Lambda (provided.al2023) and Glue 5.0 (Amazon Linux 2023), glibc 2.34. Run on
# x86_64 Linux.
set -euo pipefail
cd "$(dirname "$0")/.."

[[ "$(uname -m)" == x86_64 ]] || { echo "error: build on x86_64 Linux (the template deploys x86_64)" >&2; exit 1; }
cargo build --release --locked -p tripflow-lambda -p tripflow

out=dist/lambda
rm -rf "$out" dist/tripflow-lambda.zip
mkdir -p "$out"
cp target/release/tripflow-lambda "$out/bootstrap"
strip "$out/bootstrap"
target/release/tripflow component --export-wasm "$out/tripflow.wasm" --precompile "$out/tripflow.cwasm" >/dev/null

# provided.al2023 has glibc 2.34: refuse a bootstrap that needs newer symbols.
newest=$(objdump -T "$out/bootstrap" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1)
if [[ "$(printf '%s\nGLIBC_2.34\n' "$newest" | sort -V | tail -1)" != GLIBC_2.34 ]]; then
    echo "error: the bootstrap needs $newest but provided.al2023 has glibc 2.34;" \
        "build on a glibc <= 2.34 system or with cargo-zigbuild (--target x86_64-unknown-linux-gnu.2.34)" >&2
    exit 1
fi

(cd "$out" && zip -q -X -9 ../tripflow-lambda.zip bootstrap tripflow.cwasm tripflow.wasm)

# The Glue job: the same binary's component, the Spark host, its script.
glue=dist/glue
rm -rf "$glue"
mkdir -p "$glue"
cp target/release/tripflow "$glue/tripflow"
strip "$glue/tripflow"
newest_cli=$(objdump -T "$glue/tripflow" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1)
if [[ "$(printf '%s\nGLIBC_2.34\n' "$newest_cli" | sort -V | tail -1)" != GLIBC_2.34 ]]; then
    echo "error: tripflow needs $newest_cli but Glue 5.0 has glibc 2.34" >&2
    exit 1
fi
(cd hosts/spark && zip -q -X -9 -r "../../$glue/tripflow_spark.zip" tripflow_spark -x '*__pycache__*')
cp hosts/spark/glue_job.py "$glue/glue_job.py"
sha=$(sha256sum "$out/tripflow.wasm" | cut -c1-64)
echo "dist/tripflow-lambda.zip: $(du -h dist/tripflow-lambda.zip | cut -f1), component sha256 $sha, needs $newest"
echo "dist/glue: tripflow $(du -h "$glue/tripflow" | cut -f1), tripflow_spark.zip, glue_job.py, needs $newest_cli"
