"""SQLite journal: the embedded default. One index file and a folder of segment files per site.

Batches are stored as they were shipped, back to back in segment files
(`multiactive.journal.segments`); SQLite holds the index, in WAL mode.

An append writes its batches to the active segment, fdatasyncs it (with `fsync = true`, the
default) and then commits their index rows; it returns only after both. The index commit
itself is not synced: if a crash of the machine loses it, the batches are still in the
segment, past the last indexed one, and `open()` indexes them again (their request ids too).
A torn end of a segment (an append cut short, never acknowledged) is cut off at open. Trims
are synced before the segments they empty are deleted.

The parts, each to be read on its own:

    journal.py    SqliteJournal: the Journal interface; lifecycle, appends, reads, and its two
                  threads (a writer with the inline fast path for small appends, a reader),
                  each a `multiactive.sqlitedb.SqliteDb`
    schema.py     the tables, claiming the file for a site, upgrades, the head check at open
    index.py      Index: the statements appends and reads share, and the stream ids
    recovery.py   Recovery: at open, index again what a crash left unindexed; cut torn ends
    trim.py       Trimmer: drop a prefix of each stream in short synced commits, delete the
                  segments emptied
    ../segments.py  the segment files themselves (writer and reader)
"""

from multiactive.journal.sqlite.journal import INLINE_APPEND_BYTES, SqliteJournal

__all__ = ["INLINE_APPEND_BYTES", "SqliteJournal"]
