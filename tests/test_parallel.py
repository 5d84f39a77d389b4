"""archiver/parallel.py: ordered_map keeps order, bounds work in flight, raises at the
failing item and cancels pending work when the consumer stops."""
from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from archiver.parallel import ordered_map


class Tracker:
    """Counts fn calls running at once and items pulled from the input but not yet consumed."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.lock = threading.Lock()
        self.running = self.max_running = 0
        self.pulled = self.consumed = 0
        self.max_ahead = 0
        self.started: list[int] = []
        self.finished: list[int] = []

    def items(self):
        for i in range(self.n):
            with self.lock:
                self.pulled += 1
                self.max_ahead = max(self.max_ahead, self.pulled - self.consumed)
            yield i

    def fn(self, i: int, sleep: float = 0.0) -> int:
        with self.lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
            self.started.append(i)
        try:
            time.sleep(sleep)
            return i * i
        finally:
            with self.lock:
                self.running -= 1
                self.finished.append(i)

    def consume(self) -> None:
        with self.lock:
            self.consumed += 1


def test_order_preserved_with_random_sleeps():
    rng = random.Random(7)
    sleeps = [rng.uniform(0, 0.004) for _ in range(200)]
    with ThreadPoolExecutor(8) as pool:
        out = list(ordered_map(pool, lambda i: (time.sleep(sleeps[i]), i * 3)[1], range(200), window=16))
    assert out == [(i, i * 3) for i in range(200)]


def test_empty_input():
    with ThreadPoolExecutor(2) as pool:
        assert list(ordered_map(pool, lambda x: x, [], window=4)) == []


@pytest.mark.parametrize("window,workers", [(1, 4), (3, 8), (8, 2), (5, 5)])
def test_window_bounds_work_in_flight(window, workers):
    tr = Tracker(60)
    rng = random.Random(window)
    with ThreadPoolExecutor(workers) as pool:
        results = []
        for item, res in ordered_map(pool, lambda i: tr.fn(i, rng.uniform(0, 0.002)), tr.items(), window):
            tr.consume()
            results.append((item, res))
            time.sleep(0.0005)  # a slow consumer lets the workers run ahead, if they could
    assert results == [(i, i * i) for i in range(60)]
    assert tr.max_running <= min(window, workers)
    assert tr.max_ahead <= window
    if window > 1 and workers > 1:
        assert tr.max_running > 1  # it really is parallel


def test_window_is_enforced_with_fast_workers_and_blocked_consumer():
    tr = Tracker(100)
    with ThreadPoolExecutor(16) as pool:
        gen = ordered_map(pool, tr.fn, tr.items(), window=4)
        assert next(gen) == (0, 0)
        time.sleep(0.05)  # consumer sits on item 0; nothing more may be pulled or started
        assert tr.pulled == 4 and len(tr.started) <= 4
        rest = list(gen)
    assert len(rest) == 99 and tr.pulled == 100


def test_exception_is_raised_at_its_item():
    def fn(i: int) -> int:
        if i == 5:
            raise ValueError("bad item 5")
        return i

    got = []
    with ThreadPoolExecutor(4) as pool:
        with pytest.raises(ValueError, match="bad item 5"):
            for item, res in ordered_map(pool, fn, range(20), window=4):
                got.append(res)
    assert got == [0, 1, 2, 3, 4]


def test_exception_cancels_pending_work():
    tr = Tracker(1000)

    def fn(i: int) -> int:
        if i == 2:
            raise RuntimeError("boom")
        return tr.fn(i, 0.01)

    with ThreadPoolExecutor(2) as pool:
        with pytest.raises(RuntimeError):
            for _ in ordered_map(pool, fn, tr.items(), window=8):
                pass
    assert tr.pulled <= 8 + 2 and len(tr.finished) <= 10
    assert tr.running == 0


def test_input_iterator_exception_propagates():
    def items():
        yield 1
        raise OSError("read failed")

    with ThreadPoolExecutor(2) as pool:
        with pytest.raises(OSError, match="read failed"):
            list(ordered_map(pool, lambda x: x, items(), window=4))


def test_consumer_stopping_early_cancels_and_does_not_deadlock():
    tr = Tracker(10_000)
    release = threading.Event()

    def fn(i: int) -> int:
        if i >= 1:
            release.wait(5)
        return tr.fn(i)

    result: list = []

    def consumer() -> None:
        with ThreadPoolExecutor(2) as pool:
            gen = ordered_map(pool, fn, tr.items(), window=6)
            result.append(next(gen))
            threading.Timer(0.2, release.set).start()  # unblock the two running workers soon
            gen.close()  # consumer gives up: pending work cancelled, running work awaited
            result.append(tr.running)
        result.append("pool shut down")

    t = threading.Thread(target=consumer, daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), "deadlocked"
    assert result == [(0, 0), 0, "pool shut down"]
    assert tr.pulled <= 7  # never read further than the window
    assert len(tr.started) <= 3  # item 0 plus the two that were already running; the rest cancelled


def test_break_out_of_for_loop_cleans_up():
    tr = Tracker(500)
    with ThreadPoolExecutor(4) as pool:
        for item, _ in ordered_map(pool, lambda i: tr.fn(i, 0.002), tr.items(), window=4):
            if item == 3:
                break
        # the abandoned generator is closed when collected (CPython refcounting)
        assert tr.running == 0
    assert tr.pulled <= 8 and len(tr.started) <= 8


@pytest.mark.parametrize("window", [0, -1])
def test_window_below_one_is_refused_not_silently_empty(window):
    with ThreadPoolExecutor(2) as pool:
        with pytest.raises(ValueError, match="window"):
            list(ordered_map(pool, lambda x: x, range(5), window))


def test_lone_item_runs_on_the_calling_thread():
    """One item (a small file's only chunk): no hand-off to the pool and back."""
    with ThreadPoolExecutor(2) as pool:
        got = list(ordered_map(pool, lambda x: (x, threading.get_ident()), [7], window=4))
        assert got == [(7, (7, threading.get_ident()))]
        two = list(ordered_map(pool, lambda x: threading.get_ident(), [1, 2], window=4))
        assert all(t != threading.get_ident() for _, t in two)  # two or more still go to the pool


def test_lone_item_error_is_raised_at_its_item():
    def boom(x):
        raise KeyError(x)
    with ThreadPoolExecutor(2) as pool:
        with pytest.raises(KeyError):
            list(ordered_map(pool, boom, [1], window=4))


def test_batches_keep_order_and_bounds():
    from archiver.parallel import batches
    sizes = [1, 2, 3, 10, 1, 1, 1, 1, 1]
    got = list(batches(sizes, lambda n: n, most=3, most_bytes=6))
    assert [x for b in got for x in b] == sizes  # every item once, in order
    assert got == [[1, 2, 3], [10], [1, 1, 1], [1, 1]]  # 10 > 6 bytes: a run of its own
    assert all(len(b) <= 3 for b in got)
    assert list(batches([], lambda n: n)) == []


def _pulls(n: int, log: list):
    for i in range(n):
        log.append(("pulled", i))
        yield i


@pytest.mark.parametrize("start_ahead", [0, 3])
def test_start_ahead_pulls_more_only_while_the_first_result_is_slow(start_ahead):
    """While the first task is stuck (a slow start, such as an import), up to `start_ahead`
    more items are pulled beyond the window; none before, none once the first result is in,
    and every result still comes back in order."""
    log: list = []
    release = threading.Event()

    def fn(i):
        if i == 0:
            assert release.wait(90)
        return i * 10

    window = 2
    with ThreadPoolExecutor(4) as pool:
        gen = ordered_map(pool, fn, _pulls(20, log), window, start_ahead=start_ahead)
        def release_once_pulled() -> None:  # not before the pulls are made, however slowly this thread runs
            deadline = time.monotonic() + 60
            while sum(1 for what, _ in list(log) if what == "pulled") < window + start_ahead:
                if time.monotonic() > deadline:
                    break  # (then the assert below says how many were pulled)
                time.sleep(0.005)
            time.sleep(0.3)  # and time to pull more, if it wrongly would
            release.set()
        waiter = threading.Thread(target=release_once_pulled)
        waiter.start()
        first = next(gen)  # returns once task 0 is released
        pulled_before_first = sum(1 for what, _ in log if what == "pulled")
        out = [first] + list(gen)
        waiter.join()
    assert out == [(i, i * 10) for i in range(20)]
    assert pulled_before_first == window + start_ahead  # the window, plus the read-ahead


def test_start_ahead_keeps_the_window_once_results_flow():
    """Items pulled but not yet consumed stay within window + start_ahead, and once the
    items read ahead at the start are submitted, within the window alone again."""
    window, start_ahead = 4, 4
    tr = Tracker(300)
    outstanding = []
    with ThreadPoolExecutor(8) as pool:
        for item, res in ordered_map(pool, lambda i: tr.fn(i, 0.0005), tr.items(), window, start_ahead=start_ahead):
            assert res == item * item
            with tr.lock:
                outstanding.append(tr.pulled - tr.consumed)
            tr.consume()
    assert len(outstanding) == 300
    assert max(outstanding) <= window + start_ahead
    assert max(outstanding[window + start_ahead:]) <= window
