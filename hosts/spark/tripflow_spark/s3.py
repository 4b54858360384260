"""S3 through boto3, inside Spark tasks and on the driver alike: the same calls work on AWS
Glue, EMR and a local S3 (moto's server, with ``AWS_ENDPOINT_URL``), without Hadoop's ``s3a``
connector."""

from __future__ import annotations

import functools
import os
from typing import Any, BinaryIO

#: Object metadata naming the component that computed an object.
COMPONENT_META = "tripflow-component-sha256"


@functools.cache
def client() -> Any:
    """An S3 client; path-style addressing when an endpoint is configured (a local S3)."""
    import boto3
    from botocore.config import Config

    local = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    config = Config(
        retries={"max_attempts": 10, "mode": "adaptive"},
        s3={"addressing_style": "path"} if local else {},
    )
    return boto3.client("s3", config=config)


def split_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` → ``(bucket, key)``."""
    rest = uri.removeprefix("s3://")
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ValueError(f"{uri}: an S3 URI is s3://BUCKET/KEY")
    return bucket, key


def list_objects(uri: str) -> list[tuple[str, int]]:
    """The object ``uri`` itself, or every object under it as a prefix, by key, with sizes.
    Keys ending in ``/`` (folder markers), and keys with a part below the prefix that starts
    with ``_`` or ``.`` (``_SUCCESS``, ``_temporary/``), are left out, as Spark leaves them."""
    from botocore.exceptions import BotoCoreError, ClientError

    from tripflow_spark.inputs import InputError

    bucket, prefix = split_uri(uri)
    out: list[tuple[str, int]] = []
    try:
        pages = client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for page in pages:
            for o in page.get("Contents", []):
                key = o["Key"]
                below = key[len(prefix) :].split("/")
                if key.endswith("/") or any(p.startswith(("_", ".")) for p in below if p):
                    continue
                if key != prefix and not (
                    prefix == "" or prefix.endswith("/") or key[len(prefix)] == "/"
                ):
                    continue
                out.append((f"s3://{bucket}/{key}", int(o["Size"])))
    except (ClientError, BotoCoreError) as e:
        raise InputError(
            f"cannot list {uri}: {e}; check the bucket, the prefix and the credentials"
        ) from e
    out.sort()
    return out


class _Body:
    """A streaming object body as a readable, closable file."""

    def __init__(self, body: Any) -> None:
        self._body = body

    def read(self, size: int = -1) -> bytes:
        return self._body.read(None if size < 0 else size)

    def close(self) -> None:
        self._body.close()

    def __enter__(self) -> _Body:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_range(uri: str, start: int, end: int | None) -> BinaryIO:
    """The bytes ``[start, end)`` of an object (``end=None``: to its end)."""
    bucket, key = split_uri(uri)
    if end is not None and end <= start:
        import io

        return io.BytesIO(b"")  # type: ignore[return-value]
    span = f"bytes={start}-" if end is None else f"bytes={start}-{end - 1}"
    body = client().get_object(Bucket=bucket, Key=key, Range=span)["Body"]
    return _Body(body)  # type: ignore[return-value]


def get_text(uri: str) -> tuple[str, str] | None:
    """An object's text and ETag, or ``None`` when it does not exist."""
    from botocore.exceptions import ClientError

    bucket, key = split_uri(uri)
    try:
        o = client().get_object(Bucket=bucket, Key=key)
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return None
        raise
    return o["Body"].read().decode("utf-8"), o["ETag"]


def put(
    uri: str,
    body: bytes,
    content_type: str,
    sha256: str,
    if_match: str | None = None,
    if_none_match: bool = False,
) -> None:
    """Writes an object, tagged with the component that computed it; with ``if_match`` only if
    it is still that version, with ``if_none_match`` only if it does not exist yet."""
    bucket, key = split_uri(uri)
    extra: dict[str, Any] = {}
    if if_match is not None:
        extra["IfMatch"] = if_match
    if if_none_match:
        extra["IfNoneMatch"] = "*"
    client().put_object(
        Bucket=bucket,
        Key=key,
        Body=body,
        ContentType=content_type,
        Metadata={COMPONENT_META: sha256},
        **extra,
    )
