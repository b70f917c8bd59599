"""The invariant every scenario that deletes or moves ends with: each remaining row points
at bytes that exist and have the right content.

``assert_intact`` reads every row of the catalog back through ``open_file`` (the same
path `get` takes: its location, its decoding, its recorded size) and, for the rows a
test knows the content of, compares the bytes.
"""

from __future__ import annotations

from typing import Mapping

from apstorage.services.context import Storage
from apstorage.services.files import open_file


def assert_intact(storage: Storage, expected: Mapping[str, bytes] | None = None) -> int:
    """Read back every row; returns how many there are. ``expected``: id -> content for
    the rows whose content the test knows (rows it does not list are read, not compared)."""
    ids = [r[0] for r in storage.catalog._execute('SELECT "id" FROM "file" ORDER BY "id"')]
    for file_id in ids:
        _, chunks = open_file(storage, file_id)
        content = b"".join(chunks)  # raises when the bytes are gone, short, or undecodable
        if expected is not None and file_id in expected:
            assert content == expected[file_id], f"row {file_id}: content differs"
    return len(ids)
