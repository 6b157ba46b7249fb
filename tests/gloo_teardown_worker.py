"""Tearing down a gloo process group that DDP used, and a 2-rank check of that teardown.

The deadlock (torch 2.13, gloo backend, CPU). ``ProcessGroupGloo``'s destructor joins its worker
threads (``std::thread::join``). DDP's ``Reducer`` holds a reference to the group, and its
pybind11 binding (a ``std::shared_ptr`` holder) destroys it with the GIL held, whereas the Python
``ProcessGroup`` object releases the GIL before its destructor runs
(``IntrusivePtrNoGilDestructor``, pytorch#56297, PR #154976). ``destroy_process_group()`` drops
every Python reference (``shutdown()`` is a no-op for gloo), so when the DDP wrapper is freed
after it, the Reducer drops the last reference and the group is destroyed under the GIL. A gloo
worker thread that has not yet let go of its last collective may need the GIL at that moment: to
release a tensor whose Python object the work kept alive (``TensorImpl::decref_pyobject`` in
``~AsyncAllgatherWork``), or to run a Python callback on the work's future. Then the main thread
waits in ``join`` holding the GIL, the worker waits in ``gil_scoped_acquire``, and the process
hangs for ever, while the other rank, past the last barrier, exits normally. Whether the worker
thread is still busy is a matter of scheduling: the 2-process TRL test hung this way in 2 of 40
runs on 2 loaded cores.

:func:`destroy_after_ddp` frees every DDP wrapper while the group is still registered (the
Reducer then drops a reference that is not the last) and makes a Python ``ProcessGroup``
reference the last one, so that the group's destructor runs with the GIL released, there and
then. One more holder must be kept away: ``torch.distributed.nn.functional`` binds
``group=group.WORLD`` as the default of its ten collectives when it is imported, so importing it
(DDP does, lazily) after ``init_process_group`` keeps the group alive until interpreter shutdown,
where a gloo worker thread that needs the GIL aborts the process ("terminate called without an
active exception"). This module imports it first; :func:`destroy_after_ddp` checks that the group
is gone.

Run as a script, a check that forces the deadlock's conditions on rank 0::

    torchrun --nproc_per_node 2 tests/gloo_teardown_worker.py ORDER OUT_DIR

A Python callback on an ``all_gather`` future holds one of rank 0's gloo worker threads until
teardown has begun, then needs the GIL for :data:`HOLD_S` more seconds. ORDER ``safe`` tears down
with :func:`destroy_after_ddp` and exits; ``reducer_last`` (``destroy_process_group()``, then the
DDP wrapper is freed) hangs rank 0 every time. Each rank writes ``rank<r>.json`` before teardown
and rank 0 writes ``teardown0.json`` after it.
"""

from __future__ import annotations

import faulthandler
import gc
import json
import os
import signal
import sys
import threading
import time
import weakref
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.distributed.nn  # noqa: F401  (see the module docstring: imported before any group)
from torch.nn.parallel import DistributedDataParallel

#: Seconds the held gloo worker thread needs the GIL for once teardown has begun.
HOLD_S = 2.0
ORDERS = ("safe", "reducer_last")


def destroy_after_ddp() -> None:
    """Destroys the default process group after every DDP wrapper is gone, the group's last
    reference being a Python ``ProcessGroup`` (its destructor releases the GIL before gloo joins
    its worker threads).

    Raises:
        RuntimeError: a ``DistributedDataParallel`` wrapper is still referenced (its Reducer
            would destroy the group later, under the GIL), or something else still holds the
            group after ``destroy_process_group()``.
    """
    gc.collect()  # the DDP wrapper may sit in reference cycles (trainer, accelerator)
    n_alive = sum(isinstance(o, DistributedDataParallel) for o in gc.get_objects())
    if n_alive:
        raise RuntimeError(
            f"{n_alive} DistributedDataParallel wrapper(s) still referenced: free them before "
            "destroying the process group (their Reducer would destroy it under the GIL)"
        )
    group = dist.group.WORLD
    gone = weakref.ref(group)
    dist.destroy_process_group()
    del group  # the last reference: the GIL is released while gloo joins its threads
    if gone() is not None:
        raise RuntimeError(
            "the process group is still referenced after destroy_process_group(), so it would "
            "be destroyed later, under the GIL or during interpreter shutdown (is "
            "torch.distributed.nn imported after init_process_group?)"
        )


def _store() -> dist.TCPStore:
    """A client of the launcher's store (torchrun's MASTER_ADDR / MASTER_PORT)."""
    return dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                         is_master=False, timeout=timedelta(seconds=60))


def main(order: str, out_dir: str) -> None:
    """DDP step, an all_gather whose future callback holds a gloo thread (rank 0), teardown."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, not {order!r}")
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # stacks on demand (the test)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    rank = dist.get_rank()
    model = torch.nn.Linear(4, 2)
    ddp = DistributedDataParallel(model)
    ddp(torch.randn(3, 4)).sum().backward()  # the Reducer's bucket all-reduce
    store = _store()
    held, go = threading.Event(), threading.Event()
    held_on = []

    def hold(fut):
        """On the gloo worker thread that completes the future, with the GIL."""
        held_on.append(threading.current_thread() is not threading.main_thread())
        held.set()
        go.wait()  # GIL released until teardown begins
        time.sleep(HOLD_S)  # teardown under way; the GIL is needed again to return
        return None

    out = [torch.empty(2) for _ in range(2)]
    if rank == 0:
        work = dist.all_gather(out, torch.full((2,), 0.0), async_op=True)
        work.get_future().then(hold)  # registered before rank 1 sends: runs on a gloo thread
        store.set("teardown_check/armed", "1")
        # The future is complete once the callback runs; the work itself (and any later
        # collective) waits for the callback, so rank 0 issues nothing more.
        if not held.wait(60):
            raise RuntimeError("the all_gather callback did not start")
    else:
        store.wait(["teardown_check/armed"])
        work = dist.all_gather(out, torch.full((2,), 1.0), async_op=True)
        work.wait()
    with open(f"{out_dir}/rank{rank}.json", "w") as f:
        json.dump({"rank": rank, "order": order, "gathered": [t.tolist() for t in out],
                   "held_on_worker_thread": held_on}, f)
    del work, store
    t0 = time.perf_counter()
    go.set()
    if order == "safe":
        del ddp, model
        destroy_after_ddp()
    else:
        dist.destroy_process_group()
        del ddp, model  # the Reducer holds the last reference: destroyed under the GIL
    if rank == 0:
        with open(f"{out_dir}/teardown0.json", "w") as f:
            json.dump({"teardown_s": time.perf_counter() - t0}, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
