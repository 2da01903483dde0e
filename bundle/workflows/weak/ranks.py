"""How the WeakMedSAM stages share work between the processes of a ``torchrun`` job (``configs/multi_gpu_train.json``).

Two patterns, both plain calls in a single process (rank 0 of 1), so one code path serves one process and many:

- :func:`each_case` (:func:`rank_share` + :func:`meet`): each rank works on its share of the cases (sorted case
  ids, rank ``r`` of ``W`` takes every ``W``-th from the ``r``-th, :func:`bundle.priors.precompute.shard_case_ids`),
  then every rank meets the others, learning their results and whether one of them stopped;
- :func:`on_main`: rank 0 does the work (writes a shared file) while the others wait for it.

A failure on one rank never leaves the others waiting: the failing rank reaches the meeting with its error, and after
the meeting every rank raises (the failing one its own error, the others a ``RuntimeError`` naming the rank that
stopped and its error), as :class:`bundle.priors.precompute.PriorPrecompute` does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from bundle import distributed
from bundle.errors import error_line
from bundle.priors.precompute import shard_case_ids

__all__ = ["each_case", "meet", "on_main", "rank_share"]


def rank_share(entries: Sequence[Mapping], rank: int | None = None, world_size: int | None = None) -> list:
    """The entries (each with a ``case_id``) rank ``rank`` of ``world_size`` works on, in their given order
    (default: this process's rank and job size, so a single process gets every entry)."""
    rank = distributed.rank() if rank is None else int(rank)
    world_size = distributed.world_size() if world_size is None else int(world_size)
    ids = shard_case_ids([str(e["case_id"]) for e in entries], rank, world_size)
    return [e for e in entries if str(e["case_id"]) in ids]


def meet(what: str, error: BaseException | None = None, value: Any = None) -> list:
    """Wait for every rank and return each rank's ``value`` (rank order); raise if a rank brought an ``error``.

    ``value`` must be picklable. A single process just raises ``error`` or returns ``[value]``.
    """
    shares = distributed.gather_objects((None if error is None else error_line(error).removeprefix("ERROR: "), value))
    if error is not None:
        raise error
    halted = [(r, message) for r, (message, _) in enumerate(shares) if message is not None]
    if halted:
        raise RuntimeError(f"{what}: rank {halted[0][0]} stopped: {halted[0][1]}")
    return [v for _, v in shares]


def on_main(what: str, work: Callable[[], Any]) -> Any:
    """``work()`` on rank 0 while the other ranks wait; every rank gets its return value (which must be picklable
    under ``torchrun``) or raises when it failed."""
    result, error = None, None
    if distributed.is_main_process():
        try:
            result = work()
        except Exception as err:
            if distributed.world_size() == 1:
                raise
            error = err
    return meet(what, error, result)[0]


def each_case(what: str, entries: Sequence[Mapping], work: Callable[[Mapping], Any]) -> list:
    """``work(entry)`` for this rank's share of ``entries`` (:func:`rank_share`), then :func:`meet`; returns the
    list of every rank's results (one list per rank, rank order). ``work``'s results must be picklable."""
    done, error = [], None
    try:
        for entry in rank_share(entries):
            done.append(work(entry))
    except Exception as err:
        if distributed.world_size() == 1:
            raise
        error = err
    return meet(what, error, done)
