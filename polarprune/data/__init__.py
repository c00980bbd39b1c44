"""Data sets and batch loaders: digits, CIFAR-10/100, ImageFolder trees, fake data.

Everything small enough is held in memory as uint8 and batched by ``InMemoryLoader``, which
crops, flips and normalises a whole batch at once (a few gathers, no per-sample Python).
Large ImageFolder trees (ImageNet) go through a torch ``DataLoader`` with worker processes.

Both loaders share one contract, so training is reproducible and distributed runs are
equivalent to single-process ones:

- ``set_epoch(epoch)``: the shuffle and every augmentation draw of an epoch come from a
  generator seeded by ``(seed, epoch)`` only (never the global RNG), so resuming at the start
  of an epoch replays it exactly;
- training step ``k`` of a run with per-process batch ``B`` on ``W`` processes uses the
  *global* batch ``perm[k*B*W:(k+1)*B*W]``; rank ``r`` takes the chunk ``[r*B:(r+1)*B]``; the
  augmentation parameters belong to positions of the epoch's order, so 2 processes with batch
  B see exactly the samples and augmentations that 1 process with batch 2B sees; incomplete
  global batches are dropped (every rank has the same number of steps);
- evaluation: no shuffle, no augmentation, rank ``r`` takes samples ``r::W``.

Parts: ``cache`` (archives, decoded splits), ``sampling`` (seeds, subsets, sharding),
``augment``, ``loaders``, ``splits`` + ``sources`` + ``imagefolder`` (the data sets, by name
in ``SOURCES``), ``build`` (``build_data``). See docs/data.md.
"""

from .augment import IMAGENET_MEAN, IMAGENET_STD, channel_stats, crop_flip, imagenet_transforms, normalise
from .build import DataBundle, build_data, probe_batch
from .cache import ARCHIVE_ENV, CACHE_ENV, default_cache_root, default_cifar10_archive, ensure_extracted, is_archive
from .imagefolder import decode_images, load_imagefolder
from .loaders import FolderLoader, InMemoryLoader
from .sampling import (
    epoch_seed,
    eval_shard,
    evenly_spaced,
    global_batch_slice,
    stratified_order,
    stratified_split,
    stratified_subset,
    train_steps,
)
from .sources import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    SOURCES,
    digits_split,
    get_source,
    load_cifar_splits,
    load_digits_splits,
    load_fake_splits,
)
from .splits import ArraySplits, FolderSplits

