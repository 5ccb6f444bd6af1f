"""One model shared by many threads: identical answers, and the GIL released while it computes."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from conftest import IMAGES

import densenet


def test_threads_share_one_model_and_get_identical_answers(digits: densenet.Model) -> None:
    rng = np.random.default_rng(7)
    batches = [rng.standard_normal((n, 3, 32, 32), dtype=np.float32) for n in [1, 3, 8, 5]]
    expected = [digits.predict(b) for b in batches]
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [(i, pool.submit(digits.predict, batches[i])) for _ in range(6) for i in range(len(batches))]
        for i, future in futures:
            assert np.array_equal(future.result(), expected[i])
        files = [str(p) for p in IMAGES]
        alone = digits.classify(files)
        together = [pool.submit(digits.classify, files) for _ in range(4)]
        assert all(f.result() == alone for f in together)


def test_the_gil_is_released_while_the_engine_computes(digits: densenet.Model) -> None:
    # The main thread counts in 1 ms steps (each a sleep that lets the GIL go) while a worker
    # predicts a batch that takes 100 ms or more. Were the GIL held through `predict`, the main
    # thread could not count during it: at most once at each end, when the worker hands the GIL
    # over at a bytecode boundary. Released, it counts on all along.
    batch = np.random.default_rng(3).standard_normal((64, 3, 32, 32), dtype=np.float32)
    counter = [0]
    moved: list[int] = []
    done = threading.Event()

    def worker() -> None:
        for _ in range(3):
            before = counter[0]
            digits.predict(batch)
            moved.append(counter[0] - before)
        done.set()

    thread = threading.Thread(target=worker)
    thread.start()
    while not done.is_set():
        counter[0] += 1
        time.sleep(0.001)
    thread.join()
    assert max(moved) >= 20, moved
