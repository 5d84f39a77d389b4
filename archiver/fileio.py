"""Small file-descriptor helpers shared by the local store and restore."""
from __future__ import annotations

import os


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """os.write may write less than asked; loop until everything is written."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
