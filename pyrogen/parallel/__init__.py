"""Data parallelism on ``torch.distributed`` (``torchrun``): the process group, shards of each
global batch, collectives (:mod:`~pyrogen.parallel.distributed`) and normalisation layers whose
batch statistics are those of the global batch (:mod:`~pyrogen.parallel.sync_layers`). No
communication code of pyrogen's own: DDP and torch's collectives do the work."""
