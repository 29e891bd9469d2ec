"""Helper threads run torch single-threaded; the step thread keeps the start-up thread count,
whichever order the threads set theirs in (torch's count is process-wide until a thread's
first parallel op copies it)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch

from deltaserve.engine import threads


def _in_new_thread(fn: Callable[[], int]) -> int:
    out: list[int] = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join()
    return out[0]


def test_a_helper_keeps_one_thread_when_another_thread_sets_more_later():
    before = torch.get_num_threads()
    try:
        with ThreadPoolExecutor(1, initializer=threads.single_threaded) as helper:
            assert helper.submit(torch.get_num_threads).result() == 1
            torch.set_num_threads(4)  # e.g. the step thread pinning its own count afterwards
            assert helper.submit(torch.get_num_threads).result() == 1
    finally:
        torch.set_num_threads(before)


def test_the_step_thread_gets_its_count_after_helpers_set_one():
    before = torch.get_num_threads()
    try:
        with ThreadPoolExecutor(1, initializer=threads.single_threaded) as helper:
            helper.submit(torch.get_num_threads).result()  # the process-wide count is now 1
        # A fresh thread would copy that 1; the step thread asks for its own count.
        assert _in_new_thread(torch.get_num_threads) == 1
        assert _in_new_thread(lambda: (threads.use_intra_op_threads(3),
                                       torch.get_num_threads())[1]) == 3
    finally:
        torch.set_num_threads(before)

