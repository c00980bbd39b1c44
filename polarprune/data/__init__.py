"""Data sets and batch loaders: digits, CIFAR-10/100, ImageFolder trees, fake data.

Small data sets are held in memory as uint8 and batched by ``InMemoryLoader`` (whole-batch crops,
flips, normalisation); large ImageFolder trees go through a torch ``DataLoader`` (``FolderLoader``).
Both share one contract, so training is reproducible and distributed runs equal single-process ones:

- an epoch's shuffle and augmentations come from a generator seeded by ``(seed, epoch)`` only;
- step ``k`` with per-process batch ``B`` on ``W`` processes uses the global batch
  ``perm[k*B*W:(k+1)*B*W]``, rank ``r`` its chunk ``[r*B:(r+1)*B]``; incomplete global batches are dropped;
- evaluation: no shuffle, no augmentation, rank ``r`` takes samples ``r::W``.

See docs/data.md.
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
