"""``torch.distributed`` for the multi-label and token ledgers: which buffers are summed over ranks,
which take the max, and the rank-local cross-epoch sums (the scheme of
:class:`~dq_plugins.recording.ledger.SplitLedger`, for ledgers that name their buffers ``_<name>``).

Cross-epoch sums are rank-local between reductions: after each one rank 0 keeps the global total and
the other ranks restart from zero, so the next reduction adds only their new contributions, and a
checkpoint (:func:`reduced_copies`, summed into the saved copy) holds the global total.
"""

from __future__ import annotations

from typing import Any

import torch

from dq_plugins.recording.ledger import all_reduce_sum, distributed_rank_and_world


def _all_reduce_max(tensor: torch.Tensor) -> None:
    """``dist.all_reduce(MAX)`` in place, through int32 for the narrow integer dtypes gloo may not reduce."""
    import torch.distributed as dist

    if tensor.dtype in (torch.int8, torch.int16, torch.uint8):
        wide = tensor.to(torch.int32)
        dist.all_reduce(wide, op=dist.ReduceOp.MAX)
        tensor.copy_(wide)
    else:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)


def reduce_buffers(ledger: Any, summed: tuple[str, ...], maxed: tuple[str, ...], cross_epoch: tuple[str, ...]) -> None:
    """At the close of an epoch (a collective: every rank calls it): sum ``summed`` over ranks, take the max
    of ``maxed``, then zero ``cross_epoch`` on ranks other than 0. No-op in a single process."""
    rank, world = distributed_rank_and_world()
    if world < 2:
        return
    for name in summed:
        all_reduce_sum(getattr(ledger, f"_{name}"), ledger.device)
    for name in maxed:
        _all_reduce_max(getattr(ledger, f"_{name}"))
    if rank != 0:
        for name in cross_epoch:
            getattr(ledger, f"_{name}").zero_()


def reduced_copies(ledger: Any, names: tuple[str, ...], summed: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """CPU copies of the buffers ``names`` for a checkpoint; under ``torch.distributed`` (a collective) those in
    ``summed`` are summed over ranks and the others take the max, so rank 0's copy holds every rank's part.
    The live buffers are left alone."""
    buffers = {name: getattr(ledger, f"_{name}").clone() for name in names}
    if distributed_rank_and_world()[1] > 1:
        for name, tensor in buffers.items():
            if name in summed:
                all_reduce_sum(tensor, ledger.device)
            else:
                _all_reduce_max(tensor)
    return {name: tensor.to("cpu", copy=True) for name, tensor in buffers.items()}


def localize_for_rank(ledger: Any, summed: tuple[str, ...]) -> None:
    """After every rank restored the same checkpoint: ranks other than 0 zero ``summed``, so the next
    reduction counts each restored contribution once."""
    rank, world = distributed_rank_and_world()
    if world > 1 and rank != 0:
        for name in summed:
            getattr(ledger, f"_{name}").zero_()
