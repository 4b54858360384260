"""The ``tripflow`` binary as a partition worker: one process per piece of work, bytes in on
stdin, frames out on stdout (``tripflow partition …``).

A frame is ``tag: u8, bucket: u32 LE, len: u64 LE, payload``. This module reads the header to
route a frame and never looks inside a payload, except to read the sort key of a quarantine line
(input index and line number) so that Spark can sort them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import struct
import subprocess
import tempfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

HEADER = struct.Struct("<BIQ")
REJECT_HEAD = struct.Struct("<IQI")

EVENTS, REJECTS, TALLY, TOTALS, OPEN, SWEPT, NAMES = 1, 2, 3, 4, 5, 6, 7


class WorkerError(Exception):
    """The worker failed; the message is what it said."""


@dataclass(frozen=True)
class Worker:
    """How to run the binary: its path, and the component to run instead of its own."""

    binary: str
    component: str | None = None
    #: Where compiled component code is cached (one directory per executor).
    cache_dir: str | None = None

    def command(self, *args: str) -> list[str]:
        cmd = [self.binary]
        if self.component:
            cmd += ["--component", self.component]
        return cmd + list(args)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.cache_dir:
            env["TRIPFLOW_CACHE_DIR"] = self.cache_dir
        return env

    def run(self, args: list[str], stdin: Iterable[bytes] | BinaryIO | None) -> Iterator[bytes]:
        """Runs ``tripflow partition ARGS``, feeding ``stdin`` from a thread, and yields the
        frames it writes, whole (header and payload). Raises :class:`WorkerError` with what the
        worker said when it fails."""
        with tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(
                self.command("partition", *args),
                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                env=self.env(),
            )
            feeder = None
            if stdin is not None:
                feeder = Feeder(proc, stdin)
                feeder.start()
            assert proc.stdout is not None
            broken: WorkerError | None = None
            try:
                yield from read_frames(proc.stdout)
            except WorkerError as e:
                broken = e
            finally:
                proc.stdout.close()
                code = proc.wait()
                if feeder is not None:
                    feeder.join()
            if feeder is not None and feeder.failed is not None:
                # The input broke off (an S3 read that failed midway): the feeder killed the
                # worker, so that it could not take the break for the input's end.
                raise WorkerError(
                    f"reading the input of tripflow partition {args[0]} failed: {feeder.failed}"
                ) from feeder.failed
            if code != 0:
                err.seek(0)
                said = err.read().decode("utf-8", "replace").strip()
                raise WorkerError(
                    said or f"tripflow partition {args[0]} exited with {code}"
                ) from broken
            if broken is not None:
                raise broken

    def output(self, args: list[str], stdin: bytes | None = None) -> str:
        """Runs ``tripflow ARGS`` and returns its stdout; :class:`WorkerError` on failure."""
        done = subprocess.run(
            self.command(*args),
            input=stdin,
            capture_output=True,
            env=self.env(),
            check=False,
        )
        if done.returncode != 0:
            said = done.stderr.decode("utf-8", "replace").strip()
            raise WorkerError(said or f"tripflow {args[0]} exited with {done.returncode}")
        return done.stdout.decode("utf-8")


class Feeder(threading.Thread):
    """Writes a worker's input to its stdin until the input ends or the worker stops reading
    (a split's reader stops after its last line). If reading the input fails, the worker is
    killed, so that it cannot take the break for the input's end, and the error is kept."""

    def __init__(self, proc: subprocess.Popen, data: Iterable[bytes] | BinaryIO) -> None:
        super().__init__(daemon=True)
        self.proc = proc
        self.data = data
        self.failed: BaseException | None = None

    def chunks(self) -> Iterator[bytes]:
        if hasattr(self.data, "read"):
            while chunk := self.data.read(1 << 20):  # type: ignore[union-attr]
                yield chunk
        else:
            yield from self.data  # type: ignore[misc]

    def run(self) -> None:
        pipe = self.proc.stdin
        assert pipe is not None
        try:
            for chunk in self.chunks():
                try:
                    pipe.write(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    return
        except BaseException as e:  # kept, and raised by Worker.run
            self.failed = e
            self.proc.kill()
        finally:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                pipe.close()


def read_frames(stream: BinaryIO) -> Iterator[bytes]:
    """Whole frames from a stream of them."""
    while True:
        head = stream.read(HEADER.size)
        if not head:
            return
        if len(head) < HEADER.size:
            raise WorkerError("the worker's output ends inside a frame header")
        _, _, length = HEADER.unpack(head)
        payload = stream.read(length)
        if len(payload) < length:
            raise WorkerError("the worker's output ends inside a frame")
        yield head + payload


def tag_of(frame: bytes) -> int:
    """A frame's tag."""
    return frame[0]


def bucket_of(frame: bytes) -> int:
    """The bucket a frame goes to."""
    return HEADER.unpack_from(frame)[1]


def frame(tag: int, bucket: int, payload: bytes) -> bytes:
    """A frame."""
    return HEADER.pack(tag, bucket, len(payload)) + payload


def payload_of(frame_bytes: bytes) -> bytes:
    """A frame's payload."""
    return frame_bytes[HEADER.size :]


def rejects(frame_bytes: bytes) -> Iterator[tuple[tuple[int, int], bytes]]:
    """The quarantine lines of a rejects frame, each with its sort key (input index, line)."""
    data = memoryview(frame_bytes)[HEADER.size :]
    at = 0
    while at < len(data):
        index, line, length = REJECT_HEAD.unpack_from(data, at)
        at += REJECT_HEAD.size
        yield (index, line), bytes(data[at : at + length])
        at += length


def find_binary(explicit: str | None) -> str:
    """The ``tripflow`` binary: ``explicit``, ``$TRIPFLOW_BIN``, or ``tripflow`` on the PATH."""
    for candidate in (explicit, os.environ.get("TRIPFLOW_BIN")):
        if candidate:
            if not (os.path.isfile(candidate) and os.access(candidate, os.X_OK)):
                raise WorkerError(
                    f"{candidate} is not an executable tripflow binary; build it with "
                    "`cargo build --release -p tripflow` (target/release/tripflow)"
                )
            return os.path.abspath(candidate)
    found = shutil.which("tripflow")
    if found is None:
        raise WorkerError(
            "no tripflow binary: pass --tripflow PATH or set TRIPFLOW_BIN (build it with "
            "`cargo build --release -p tripflow`)"
        )
    return found
