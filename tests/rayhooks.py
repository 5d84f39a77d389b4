"""Ray worker setup hooks for tests only (production code has none): installed with
`runtime_env={"worker_process_setup_hook": "tests.rayhooks.install"}`, they wrap the chunk
readers of the worker's pipeline (the chunk reader of a big file, the whole read of a file
below the CDC minimum), as the environment variable ARCHIVER_TEST_HOOK says:

  kill-once:MARKER   SIGKILL this worker after a file's first chunk (a small file: after its
                     read, before it is saved), unless MARKER exists
                     (it is created first, so the retry on a fresh worker succeeds)
  kill-always        SIGKILL this worker after every file's first chunk
  touch:COUNTER      append a line to COUNTER, then change the file being read (its
                     mtime moves: a SourceChangedError), so COUNTER counts the attempts"""
from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any, Iterator


def install() -> None:
    how = os.environ.get("ARCHIVER_TEST_HOOK", "")
    if not how:
        return
    from archiver import pipeline
    real = pipeline.iter_chunks

    def hooked(f: Any, size: int, policy: Any, detected: Any = None) -> Iterator[Any]:
        for i, rc in enumerate(real(f, size, policy, detected=detected)):
            yield rc
            if i == 0:
                _act(how, f.name)

    pipeline.iter_chunks = hooked
    real_whole = pipeline.read_whole

    def hooked_whole(fd: int, size: int) -> bytes:
        data = real_whole(fd, size)  # the small-file path checks its fstat after this read
        _act(how, os.readlink(f"/proc/self/fd/{fd}"))
        return data

    pipeline.read_whole = hooked_whole


def _act(how: str, path: str) -> None:
    kind, _, arg = how.partition(":")
    if kind == "kill-once":
        marker = Path(arg)
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)
    elif kind == "kill-always":
        os.kill(os.getpid(), signal.SIGKILL)
    elif kind == "touch":
        with open(arg, "a") as f:
            f.write(path + "\n")
        st = os.stat(path)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
