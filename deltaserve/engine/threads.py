"""Which threads of a serving process run torch ops in parallel: the step thread only.

torch's CPU ops share out work through OpenMP (libgomp). Each thread that runs a parallel op
gets its own team of worker threads; once the process holds more OpenMP workers than cores,
libgomp stops spin-waiting for them and parks them in the kernel after every op, and every
step pays that wake-up (measured on 2 cores: a served step ~20-30% slower after a helper
thread had validated a sparse delta with two threads).

So helper threads (adapter loading and validation, grammar compilation, the event loop's
default executor) call `single_threaded` first, and the step thread calls
`use_intra_op_threads` with the count this process started with.

torch keeps one process-wide thread count, which a thread copies into its own OpenMP setting
the first time it runs a parallel op, and `torch.set_num_threads` sets both. Each function
here therefore lets torch do that first copy before setting the calling thread's own count,
so a later change by another thread cannot leak into it.
"""

from __future__ import annotations

import torch

STARTUP_THREADS = torch.get_num_threads()
"""torch's intra-op thread count when deltaserve was imported (before any helper thread set
its own): by default one per core."""


def use_intra_op_threads(n: int = STARTUP_THREADS) -> None:
    """The calling thread runs torch ops with `n` OpenMP threads from now on."""
    torch.get_num_threads()  # torch's first-use copy of the process-wide count, done now
    torch.set_num_threads(n)


def single_threaded() -> None:
    """Thread initializer for helper threads: torch ops run on the calling thread alone."""
    use_intra_op_threads(1)
