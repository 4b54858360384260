"""The job's inputs: local files and directories, ``s3://`` objects and prefixes, listed in the
order given and checked before any work is done, then cut into splits as Hadoop cuts text files.

A plain input is cut into byte ranges; a split holds the lines that *start* in its range, so
every line belongs to exactly one split. A gzip input cannot be cut and is one split. Which
input and line a record comes from decides which copy of an event is first, so each split is
told how many line feeds come before it: :func:`scan` counts them (and, for gzip inputs, reads
every member through to its checksum) in a first pass.

A DynamoDB export of the pipeline's table (a directory or prefix holding
``manifest-summary.json``) is read as the events it stores: the ``tripflow`` binary reads and
checks its manifests (``tripflow partition export-files``) and lists its data files; each data
file is one split, which the parse worker checks against its manifest line and has the core
render as event records (``tripflow partition parse --export-entry``). Nothing here reads an
item.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from tripflow_spark import s3

#: The first bytes of a gzip member.
GZIP_MAGIC = b"\x1f\x8b"
#: Bytes read per call while scanning.
CHUNK = 4 << 20
#: The file that makes a directory or prefix a DynamoDB export.
EXPORT_SUMMARY = "manifest-summary.json"
#: The manifests an export's reader needs (the checksums when present).
EXPORT_MANIFESTS = (
    "manifest-summary.json",
    "manifest-summary.checksum",
    "manifest-files.json",
    "manifest-files.checksum",
)

#: Reads the manifests in a local directory; returns each data file's path under it and its
#: manifest line (JSON), in the manifest's order (``tripflow partition export-files``).
ExportFiles = Callable[[str], list[tuple[str, str]]]


class InputError(Exception):
    """An input that cannot be read; the message names it and says what to do."""


@dataclass(frozen=True)
class InputFile:
    """One input file or object, in the order the job reads them."""

    index: int
    #: How quarantine lines and the report name it: the path or URI as given or listed.
    name: str
    #: A local path, or an ``s3://bucket/key`` URI.
    uri: str
    size: int
    gzip: bool
    #: For a data file of a table export: its line of ``manifest-files.json``.
    export_entry: str | None = None


@dataclass(frozen=True)
class Split:
    """A byte range of an input: the lines that start in ``[start, end)``."""

    input: InputFile
    number: int
    start: int
    #: ``None``: to the end (a gzip input, or the last split).
    end: int | None


def looks_like_export(arg: str) -> bool:
    """Whether the directory ``arg`` is an export's (its summary here) or a copy of an export
    prefix (``AWSDynamoDB/`` here). Which export, and whether it checks out, the binary decides
    (``partition export-files``)."""
    return os.path.isfile(os.path.join(arg, EXPORT_SUMMARY)) or os.path.isdir(
        os.path.join(arg, "AWSDynamoDB")
    )


def export_inputs(
    root: str, sizes: dict[str, int], listed: list[tuple[str, str]]
) -> list[tuple[str, str, int, str]]:
    """The data files of the export at ``root`` (a directory or ``s3://`` prefix) that the
    manifest lists, as found entries; a listed file that is not there stops the job."""
    out = []
    for path, entry in listed:
        uri = f"{root.rstrip('/')}/{path}"
        if uri not in sizes:
            raise InputError(
                f"{uri}: listed in manifest-files.json but missing: the export is incomplete; "
                "copy the export again (every object under its data/ folder)"
            )
        out.append((uri, uri, sizes[uri], entry))
    return out


def expand(args: list[str], export_files: ExportFiles | None = None) -> list[InputFile]:
    """Lists the inputs: a file is itself; a directory its files (by name, hidden and ``_``
    files left out, as Spark does); an ``s3://`` URI the object or every object under the prefix
    (by key); a directory or prefix holding a DynamoDB export the data files its manifest lists,
    read by ``export_files``. Raises :class:`InputError` on the first one that cannot be read."""
    found: list[tuple[str, str, int, str | None]] = []
    for arg in args:
        if arg.startswith("s3://"):
            objects = s3.list_objects(arg)
            if not objects:
                raise InputError(
                    f"{arg}: no objects under this prefix; check the bucket and prefix "
                    "(and AWS_ENDPOINT_URL / credentials for a local S3)"
                )
            summaries = [u for u, _ in objects if u.endswith("/" + EXPORT_SUMMARY)]
            if summaries and export_files is not None:
                if len(summaries) > 1:
                    raise InputError(
                        f"{arg}: {len(summaries)} exports under this prefix; pass the prefix "
                        "of the one to read (…/AWSDynamoDB/<export id>/)"
                    )
                root = summaries[0].removesuffix("/" + EXPORT_SUMMARY)
                sizes = dict(objects)
                with tempfile.TemporaryDirectory(prefix="tripflow-export-") as tmp:
                    for name in EXPORT_MANIFESTS:
                        uri = f"{root}/{name}"
                        if uri in sizes:
                            with (
                                open_range(uri, 0, None) as src,
                                open(os.path.join(tmp, name), "wb") as dst,
                            ):
                                shutil.copyfileobj(src, dst)
                    listed = export_files(tmp)
                found.extend(export_inputs(root, sizes, listed))
                continue
            found.extend((uri, uri, size, None) for uri, size in objects)
        elif os.path.isdir(arg) and export_files is not None and looks_like_export(arg):
            # Paths come back under ``arg`` (``AWSDynamoDB/<export id>/data/…`` for a copy of
            # the prefix).
            listed = export_files(arg)
            sizes = {}
            for path, _ in listed:
                uri = os.path.join(arg, path)
                if os.path.isfile(uri):
                    sizes[uri] = os.path.getsize(uri)
            found.extend(export_inputs(arg, sizes, listed))
        elif os.path.isdir(arg):
            names = sorted(
                n
                for n in os.listdir(arg)
                if not n.startswith((".", "_")) and os.path.isfile(os.path.join(arg, n))
            )
            if not names:
                raise InputError(f"{arg}: the directory holds no input files")
            for n in names:
                path = os.path.join(arg, n)
                found.append((path, os.path.abspath(path), os.path.getsize(path), None))
        else:
            try:
                with open(arg, "rb"):
                    pass
            except OSError as e:
                raise InputError(
                    f"cannot read {arg}: {e.strerror or e}; check the path "
                    "(inputs are NDJSON files, directories of them, or s3:// prefixes)"
                ) from e
            found.append((arg, os.path.abspath(arg), os.path.getsize(arg), None))
    files = []
    for index, (name, uri, size, entry) in enumerate(found):
        magic = b""
        if size > 0:
            try:
                with open_range(uri, 0, 2) as head:
                    magic = head.read(2)
            except Exception as e:  # an S3 or file error, said in the user's terms
                raise InputError(f"cannot read {name}: {e}; check it can be read") from e
        files.append(InputFile(index, name, uri, size, magic == GZIP_MAGIC, entry))
    return files


def plan(files: list[InputFile], split_bytes: int) -> list[Split]:
    """Cuts plain inputs into ranges of ``split_bytes``; a gzip input is one split."""
    splits = []
    for f in files:
        if f.gzip or f.size <= split_bytes:
            splits.append(Split(f, 0, 0, None))
            continue
        starts = list(range(0, f.size, split_bytes))
        for n, start in enumerate(starts):
            end = starts[n + 1] if n + 1 < len(starts) else None
            splits.append(Split(f, n, start, end))
    return splits


@dataclass(frozen=True)
class Scanned:
    """What the first pass found in one split: its line feeds, or why it cannot be read."""

    split: Split
    newlines: int
    error: str | None = None


def scan(split: Split) -> Scanned:
    """Counts the line feeds in a plain split's range; reads a gzip input through to the end
    of its last member, so a corrupt member stops the job before any work is done."""
    name = split.input.name
    try:
        if split.input.gzip:
            with open_range(split.input.uri, 0, None) as raw:
                for _ in gunzip_chunks(raw):
                    pass
            return Scanned(split, 0)
        end = split.end if split.end is not None else split.input.size
        count = 0
        with open_range(split.input.uri, split.start, end) as raw:
            while chunk := raw.read(CHUNK):
                count += chunk.count(b"\n")
        return Scanned(split, count)
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        what = "corrupt gzip data" if split.input.gzip else "cannot read it"
        return Scanned(
            split,
            0,
            f"{name}: {what} ({e}); check it (gzip -t for a gzip file), then fetch or "
            "compress it again, or leave it out",
        )


def gunzip_chunks(raw: BinaryIO) -> Iterator[bytes]:
    """The decompressed bytes of every gzip member of ``raw``, checksums checked."""
    with gzip.GzipFile(fileobj=raw) as gz:
        while chunk := gz.read(CHUNK):
            yield chunk


def open_range(uri: str, start: int, end: int | None) -> BinaryIO:
    """The bytes ``[start, end)`` of a local file or S3 object (``end=None``: to its end)."""
    if uri.startswith("s3://"):
        return s3.open_range(uri, start, end)
    f = open(uri, "rb")  # noqa: SIM115 - returned to the caller, who closes it
    f.seek(start)
    if end is None:
        return f
    return _Limited(f, end - start)


class _Limited:
    """At most ``n`` bytes of a file."""

    def __init__(self, f: BinaryIO, n: int) -> None:
        self._f = f
        self._left = n

    def read(self, size: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        want = self._left if size < 0 else min(size, self._left)
        data = self._f.read(want)
        self._left -= len(data)
        return data

    def __enter__(self) -> _Limited:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()
