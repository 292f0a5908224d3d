"""Segment files: the bytes of a site's stored batches, appended in the order written.

The SQLite journal keeps its index (streams, where each batch lies, request ids) in SQLite
and the batch bytes here, because storing megabyte blobs inside SQLite pages cost about seven
times the CPU per byte of appending them to a file (measured in `docs/benchmarks.md`).

    <folder>/000000000001.seg      numbered from 1; the highest number is the active one
    <folder>/000000000002.seg      batches as stored (header + body), back to back

A segment only grows by whole appends; the active one is closed and a new one started once it
passes `max_bytes`. Appends write, then fdatasync, and only then does the journal index them,
so an indexed batch is always durable. What lies past the last indexed batch of a segment is
either a batch whose index commit was lost (the journal indexes it again at open) or the torn
end of an append that never completed (never acknowledged; cut off at open).

`SegmentWriter` runs on the journal's writer thread and `SegmentReader` on its reader thread;
neither is thread-safe on its own.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from multiactive.errors import JournalError

DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
SUFFIX = ".seg"
IOV_MAX = os.sysconf("SC_IOV_MAX")  # buffers one pwritev takes (1024 on Linux)


@dataclass(frozen=True, slots=True)
class Location:
    """Where one stored batch lies."""

    segment: int
    offset: int
    size: int


def segment_path(folder: Path, number: int) -> Path:
    return folder / f"{number:012d}{SUFFIX}"


def segment_numbers(folder: Path) -> list[int]:
    """The segments in `folder`, oldest first."""
    numbers = []
    for path in folder.glob(f"*{SUFFIX}"):
        with contextlib.suppress(ValueError):
            numbers.append(int(path.stem))
    return sorted(numbers)


class SegmentWriter:
    def __init__(self, folder: Path, *, max_bytes: int = DEFAULT_SEGMENT_BYTES, fsync: bool = True):
        self.folder = folder
        self._max_bytes = max_bytes
        self._fsync = fsync
        self._fd = -1
        self.active = 0
        self.size = 0  # bytes in the active segment

    def open(self) -> list[int]:
        """Open the newest segment for appends (creating the first); return all numbers."""
        self.folder.mkdir(parents=True, exist_ok=True)
        numbers = segment_numbers(self.folder)
        if not numbers:
            self._start(1)
            return [1]
        self._open_existing(numbers[-1])
        return numbers

    def _open_existing(self, number: int) -> None:
        self._fd = os.open(segment_path(self.folder, number), os.O_RDWR)
        self.active = number
        self.size = os.fstat(self._fd).st_size

    def _start(self, number: int) -> None:
        self._fd = os.open(segment_path(self.folder, number), os.O_RDWR | os.O_CREAT | os.O_EXCL)
        self.active = number
        self.size = 0
        if self._fsync:
            _sync_folder(self.folder)  # the new name survives a crash too

    def append(self, chunks: Sequence[bytes | memoryview]) -> list[Location]:
        """Write batches at the end of the active segment and make them durable; on any
        failure the segment is cut back to where it was and the error raised."""
        start = self.size
        try:
            size = _write_all(self._fd, chunks, start)
            if self._fsync:
                os.fdatasync(self._fd)
        except BaseException:
            self.undo(start)
            raise
        self.size = start + size
        locations = []
        offset = start
        for chunk in chunks:
            locations.append(Location(self.active, offset, len(chunk)))
            offset += len(chunk)
        return locations

    def undo(self, offset: int) -> None:
        """Cut the active segment back to `offset` (an append whose index commit failed)."""
        try:
            os.ftruncate(self._fd, offset)
        except OSError as exc:
            raise JournalError(
                f"cannot cut {segment_path(self.folder, self.active)} back to {offset} bytes "
                f"after a failed append ({exc}); restart the site so that it recovers"
            ) from exc
        self.size = offset

    def roll_if_full(self) -> bool:
        """Start the next segment once the active one passed `max_bytes`."""
        if self.size < self._max_bytes:
            return False
        self.close()
        self._start(self.active + 1)
        return True

    def size_of(self, number: int) -> int:
        return segment_path(self.folder, number).stat().st_size

    def read_from(self, number: int, offset: int) -> bytes:
        """The bytes of a segment from `offset` to its end (recovery)."""
        with segment_path(self.folder, number).open("rb") as file:
            file.seek(offset)
            return file.read()

    def cut(self, number: int, offset: int) -> None:
        """Cut a segment's torn end off (recovery)."""
        if number == self.active:
            self.undo(offset)
            return
        with segment_path(self.folder, number).open("r+b") as file:
            file.truncate(offset)

    def remove(self, numbers: Sequence[int]) -> None:
        """Delete segments that no indexed batch lies in any more (never the active one)."""
        for number in numbers:
            if number != self.active:
                segment_path(self.folder, number).unlink(missing_ok=True)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class SegmentReader:
    """Reads stored batches by location, keeping the segments it reads from open."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._fds: dict[int, int] = {}

    def read(self, location: Location) -> bytes:
        fd = self._fds.get(location.segment)
        if fd is None:
            path = segment_path(self.folder, location.segment)
            try:
                fd = self._fds[location.segment] = os.open(path, os.O_RDONLY)
            except FileNotFoundError as exc:
                raise JournalError(f"{path} is missing; the journal index refers to it") from exc
        data = os.pread(fd, location.size, location.offset)
        if len(data) != location.size:
            raise JournalError(
                f"{segment_path(self.folder, location.segment)} ends before the batch at "
                f"offset {location.offset} (+{location.size} bytes) that the index refers to"
            )
        return data

    def forget(self, numbers: Sequence[int]) -> None:
        """Close removed segments."""
        for number in numbers:
            fd = self._fds.pop(number, None)
            if fd is not None:
                os.close(fd)

    def close(self) -> None:
        self.forget(list(self._fds))


def _write_all(fd: int, chunks: Sequence[bytes | memoryview], offset: int) -> int:
    """Write every chunk at `offset` with gathered writes (no joined copy of the batches);
    return how many bytes were written."""
    views = [memoryview(c).cast("B") for c in chunks]
    written = 0
    while views:
        done = os.pwritev(fd, views[:IOV_MAX], offset + written)
        written += done
        while views and done >= len(views[0]):
            done -= len(views.pop(0))
        if done:
            views[0] = views[0][done:]
    return written


def _sync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
