"""Bounded, ordered parallel map: the one concurrency primitive of archive, verify and restore.

At most `window` items are in flight, so memory is bounded by a few chunks whatever the
input size; results come back in input order, so callers can hash whole files and write
sequentially while workers fetch, decode and hash in parallel."""
from __future__ import annotations

import itertools
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

def default_workers() -> int:
    """One thread per core for hashing and zstd (which release the GIL), plus two so the
    cores stay busy while other workers wait on fsync or the network."""
    return max(2, min(16, (os.cpu_count() or 2) + 2))


def window_for(workers: int) -> int:
    """Chunks in flight: one per worker, so memory stays at a handful of chunks (each up
    to 8 MiB raw plus its encoded form); a deeper window measured no faster here."""
    return workers


T = TypeVar("T")
R = TypeVar("R")

# Small files per task (restore, deep verify): few enough that the tasks in flight keep every
# core busy, many enough that the hand-off to a thread and back is paid once per batch.
BATCH_ITEMS = 32
BATCH_BYTES = 4 << 20


def batches(items: Iterable[T], size: Callable[[T], int], most: int = BATCH_ITEMS,
            most_bytes: int = BATCH_BYTES) -> Iterator[list[T]]:
    """`items` in order, in runs of at most `most` items and about `most_bytes` bytes (an
    item larger than that is a run of its own): one task per run rather than per small
    file, since handing a file of a few KiB to a thread and back costs more than its work."""
    run: list[T] = []
    total = 0
    for item in items:
        n = size(item)
        if run and (len(run) >= most or total + n > most_bytes):
            yield run
            run, total = [], 0
        run.append(item)
        total += n
    if run:
        yield run


def ordered_map(pool: ThreadPoolExecutor, fn: Callable[[T], R], items: Iterable[T],
                window: int, start_ahead: int = 0) -> Iterator[tuple[T, R]]:
    """Yield (item, fn(item)) in order. An exception from fn is raised at its item;
    pending work is cancelled when the consumer stops early. A lone item (a small file's
    one chunk, a batch of one file) runs on the calling thread: a hand-off to the pool and
    back would cost more than it overlaps.

    `start_ahead`: while the first result is not in yet, pull up to this many more items
    from `items` (work the input does as it is pulled, such as reading and hashing, done
    while the pool's first tasks are slow to start, e.g. importing numpy); once the first
    result is in, the window alone bounds what is pulled, so memory in the steady state
    is unchanged."""
    if window < 1:  # would otherwise yield nothing at all: every item silently dropped
        raise ValueError(f"ordered_map window must be >= 1, got {window}")
    inflight: deque[tuple[T, Future[R]]] = deque()
    ahead: deque[T] = deque()  # pulled early (start_ahead), not yet submitted
    it = iter(items)
    if window > 1:  # peeking one item ahead stays within the window
        first = next(it, _END)
        if first is _END:
            return
        second = next(it, _END)
        if second is _END:
            yield first, fn(first)  # type: ignore[arg-type]
            return
        it = itertools.chain((first, second), it)
    before_first = True  # no result in yet: start_ahead may pull more
    try:
        while True:
            while len(inflight) < window:
                item = ahead.popleft() if ahead else next(it, _END)
                if item is _END:
                    break
                inflight.append((item, pool.submit(fn, item)))
            if not inflight:
                return
            item, fut = inflight.popleft()
            while before_first and len(ahead) < start_ahead and not fut.done():
                more = next(it, _END)
                if more is _END:
                    break
                ahead.append(more)
            before_first = False
            yield item, fut.result()
    finally:
        for _, fut in inflight:
            fut.cancel()
        for _, fut in inflight:  # let running ones finish so no worker still touches our data
            if not fut.cancelled():
                try:
                    fut.result()
                except BaseException:
                    pass


_END: object = object()
