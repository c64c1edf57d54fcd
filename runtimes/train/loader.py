"""Turn lists of sample indices into batches, in data loader workers when decoding is slow.

Each worker job is one whole micro-batch, so the order of batches is the order of the jobs
whatever the number of workers. A worker that meets a bad file hands the message back instead
of raising, so the user sees one clear line rather than a worker traceback.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from resnext_compiler.errors import UserError
from resnext_compiler.runtimes.train.images import ImageSet


class _Jobs(torch.utils.data.Dataset):
    def __init__(self, images: ImageSet, jobs: list[torch.Tensor], epoch: int):
        self.images, self.jobs, self.epoch = images, jobs, epoch

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor] | str:
        try:
            return self.images.load(self.jobs[k], self.epoch)
        except UserError as exc:
            return str(exc)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def batches(images: ImageSet, jobs: list[torch.Tensor], epoch: int,
            workers: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (images, labels) for each index tensor in `jobs`, in order."""
    if not images.parallel or workers <= 0:
        for indices in jobs:
            yield images.load(indices, epoch)
        return
    loader = torch.utils.data.DataLoader(
        _Jobs(images, jobs, epoch), batch_size=None, shuffle=False, num_workers=workers,
        worker_init_fn=_worker_init, prefetch_factor=2)
    for item in loader:
        if isinstance(item, str):
            raise UserError(item)
        yield item
