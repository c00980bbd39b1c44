"""Tests of polarprune.data: data sets, splits, the in-memory loader's contract, caches, errors."""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from polarprune import data as pdata
from polarprune.config import DataConfig
from polarprune.data import (
    InMemoryLoader,
    build_data,
    channel_stats,
    crop_flip,
    default_cifar10_archive,
    digits_split,
    ensure_extracted,
    epoch_seed,
    normalise,
    probe_batch,
    stratified_split,
    stratified_subset,
)
from polarprune.errors import PolarpruneError
from fixtures import make_cifar10, make_cifar100, make_imagefolder


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own cache folder (decoded images, extracted archives)."""
    cache = tmp_path / "cache"
    monkeypatch.setenv(pdata.CACHE_ENV, str(cache))
    return cache


def indexed_loader(n: int, *, batch_size: int, train: bool, rank: int = 0, world_size: int = 1,
                   padding: int = 0, flip: bool = False, seed: int = 0, size: int = 6) -> InMemoryLoader:
    """A loader whose label is the sample index and whose image pixels are distinct per sample."""
    images = torch.randint(1, 256, (n, 2, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    return InMemoryLoader(images, torch.arange(n), batch_size=batch_size, mean=(0.5, 0.5), std=(0.25, 0.25),
                          train=train, padding=padding, flip=flip, seed=seed, rank=rank, world_size=world_size)


def all_batches(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in loader]


def same_batches(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))


# ----------------------------------------------------------------------------- pure functions


def test_epoch_seed_depends_on_both_parts_and_is_stable():
    seeds = {epoch_seed(s, e) for s in range(4) for e in range(4)}
    assert len(seeds) == 16
    assert epoch_seed(3, 7) == epoch_seed(3, 7)
    assert 0 <= epoch_seed(-1, 0) < 2**63


def test_stratified_subset_is_proportional_and_fixed():
    labels = np.array([0] * 50 + [1] * 30 + [2] * 20)
    subset = stratified_subset(labels, 10)
    assert np.bincount(labels[subset]).tolist() == [5, 3, 2]
    assert np.array_equal(subset, stratified_subset(labels, 10))
    assert np.array_equal(subset, np.sort(subset)) and len(set(subset.tolist())) == 10
    assert not np.array_equal(subset, stratified_subset(labels, 10, seed=99))
    assert len(stratified_subset(labels, 1000)) == 100


def test_stratified_split_partitions():
    labels = np.repeat(np.arange(4), [10, 20, 30, 40])
    keep, holdout = stratified_split(labels, 20, seed=0)
    assert np.bincount(labels[holdout]).tolist() == [2, 4, 6, 8]
    assert sorted(keep.tolist() + holdout.tolist()) == list(range(100))


def test_crop_flip_matches_manual_crop_and_mirror():
    image = torch.arange(2 * 5 * 7, dtype=torch.uint8).view(1, 2, 5, 7).repeat(3, 1, 1, 1)
    padding = 2
    offsets = torch.tensor([[0, 0], [2, 2], [4, 1]])
    flips = torch.tensor([False, True, True])
    out = crop_flip(image, padding, offsets, flips)
    padded = np.pad(image.numpy(), ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    for i in range(3):
        dy, dx = offsets[i].tolist()
        expected = padded[i, :, dy : dy + 5, dx : dx + 7]
        if flips[i]:
            expected = expected[:, :, ::-1]
        assert np.array_equal(out[i].numpy(), expected), i
    # offset (p, p) without flip is the identity; the top-left crop starts with 2 zero rows
    assert torch.equal(crop_flip(image[:1], padding, torch.tensor([[2, 2]]), None), image[:1])
    assert out[0, :, :2, :].eq(0).all() and out[0, :, :, :2].eq(0).all()


def test_channel_stats_hand_values():
    images = torch.tensor([[[[0, 255]], [[51, 51]]]], dtype=torch.uint8)  # 1 x 2 x 1 x 2
    mean, std = channel_stats(images)
    assert mean == pytest.approx((0.5, 0.2)) and std[0] == pytest.approx(0.5)
    assert std[1] == pytest.approx(1e-3)  # constant channel: no division by zero later


def test_normalise_hand_values():
    images = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 1, 1, 3)
    out = normalise(images, mean=(0.2,), std=(0.5,))
    assert out.dtype == torch.float32
    assert torch.allclose(out.flatten(), torch.tensor([-0.4, 0.0, 1.6]), atol=1e-6)


# ----------------------------------------------------------------------------- digits


def test_digits_shapes_dtypes_and_normalisation():
    bundle = build_data(DataConfig(name="digits", batch_size=64, augment=False))
    assert (bundle.num_classes, bundle.in_channels, bundle.input_size) == (10, 1, (8, 8))
    assert (bundle.train_size, bundle.eval_size) == (1437, 360)
    assert len(bundle.train_loader) == 1437 // 64 and len(bundle.eval_loader) == 2
    images, labels = next(iter(bundle.train_loader))
    assert images.shape == (64, 1, 8, 8) and images.dtype == torch.float32
    assert labels.shape == (64,) and labels.dtype == torch.int64
    # without augmentation the train images are normalised by their own mean/std
    everything = torch.cat([x for x, _ in bundle.train_loader])
    assert abs(everything.mean().item()) < 0.03 and abs(everything.std().item() - 1.0) < 0.03
    evaluated = torch.cat([y for _, y in bundle.eval_loader])
    assert len(evaluated) == 360


def test_digits_split_is_fixed_and_stratified():
    images, labels, train_idx, test_idx = digits_split()
    assert images.shape == (1797, 8, 8) and images.dtype == np.uint8 and images.max() == 255
    assert len(test_idx) == 360 and len(train_idx) == 1437
    assert sorted(train_idx.tolist() + test_idx.tolist()) == list(range(1797))
    expected = np.bincount(labels) * 360 / 1797
    assert np.all(np.abs(np.bincount(labels[test_idx]) - expected) <= 1)
    again = digits_split()
    assert np.array_equal(again[3], test_idx)
    # pinned: a change of the split (and so of every reported digits number) must be deliberate
    digest = hashlib.sha256(test_idx.astype(np.int64).tobytes()).hexdigest()[:16]
    assert digest == PINNED_DIGITS_SPLIT, digest


PINNED_DIGITS_SPLIT = "4799f9744ac7d101"


def test_digits_split_independent_of_run_seed():
    a = build_data(DataConfig(name="digits"), seed=0)
    b = build_data(DataConfig(name="digits"), seed=17)
    assert torch.equal(a.eval_loader.labels, b.eval_loader.labels)
    assert torch.equal(a.train_loader.images, b.train_loader.images)


def test_subset_sizes_stratified_and_seed_independent():
    cfg = DataConfig(name="digits", train_subset=100, eval_subset=50, batch_size=32)
    a = build_data(cfg, seed=0)
    b = build_data(cfg, seed=3)
    assert (a.train_size, a.eval_size) == (100, 50)
    assert len(a.train_loader) == 3 and len(a.eval_loader) == 1
    assert torch.equal(a.train_loader.labels, b.train_loader.labels)
    assert torch.equal(a.train_loader.images, b.train_loader.images)
    assert np.bincount(a.eval_loader.labels.numpy(), minlength=10).tolist() == [5] * 10


# ----------------------------------------------------------------------------- loader contract


def test_same_seed_and_epoch_replays_exactly_regardless_of_global_rng():
    a = indexed_loader(40, batch_size=8, train=True, padding=1, flip=True, seed=3)
    b = indexed_loader(40, batch_size=8, train=True, padding=1, flip=True, seed=3)
    a.set_epoch(5)
    b.set_epoch(5)
    torch.manual_seed(1)
    first = all_batches(a)
    torch.manual_seed(2)
    assert same_batches(first, all_batches(b))
    assert same_batches(first, all_batches(a))  # iterating the same epoch again
    a.set_epoch(6)
    assert not same_batches(first, all_batches(a))
    c = indexed_loader(40, batch_size=8, train=True, padding=1, flip=True, seed=4)
    c.set_epoch(5)
    assert not same_batches(first, all_batches(c))


def test_epoch_is_a_permutation_without_repeats():
    loader = indexed_loader(37, batch_size=8, train=True)
    labels = torch.cat([y for _, y in loader])
    assert len(loader) == 4 and len(labels) == 32  # drop_last
    assert len(set(labels.tolist())) == 32
    assert labels.tolist() != sorted(labels.tolist())  # shuffled


@pytest.mark.parametrize("padding,flip", [(2, True), (0, False)])
def test_two_ranks_of_batch_b_equal_one_rank_of_batch_2b(padding: int, flip: bool):
    single = indexed_loader(50, batch_size=8, train=True, padding=padding, flip=flip, seed=11)
    ranks = [indexed_loader(50, batch_size=4, train=True, padding=padding, flip=flip, seed=11, rank=r, world_size=2)
             for r in range(2)]
    for loader in (single, *ranks):
        loader.set_epoch(2)
    assert len(single) == len(ranks[0]) == len(ranks[1]) == 6
    for (x, y), (x0, y0), (x1, y1) in zip(single, *ranks):
        assert torch.equal(x, torch.cat([x0, x1]))
        assert torch.equal(y, torch.cat([y0, y1]))


def test_eval_sharding_covers_every_sample_once():
    n, world = 23, 3
    seen = []
    for rank in range(world):
        loader = indexed_loader(n, batch_size=4, train=False, rank=rank, world_size=world)
        labels = [y for _, y in loader]
        assert len(loader) == len(labels)
        seen += torch.cat(labels).tolist()
    assert sorted(seen) == list(range(n))
    single = indexed_loader(n, batch_size=4, train=False)
    assert torch.cat([y for _, y in single]).tolist() == list(range(n))  # no shuffle


def test_training_augmentation_is_a_real_crop_or_flip_of_the_source():
    padding = 1
    loader = indexed_loader(16, batch_size=16, train=True, padding=padding, flip=True, seed=2)
    source = loader.images
    padded = np.pad(source.numpy(), ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    seen_offsets, seen_flips = set(), set()
    for epoch in range(3):
        loader.set_epoch(epoch)
        for images, labels in loader:
            raw = torch.round(images * (0.25 * 255) + 0.5 * 255).to(torch.uint8).numpy()  # undo normalise
            for image, label in zip(raw, labels.tolist()):
                matches = [
                    (dy, dx, flipped)
                    for dy in range(3) for dx in range(3) for flipped in (False, True)
                    if np.array_equal(image, (lambda c: c[:, :, ::-1] if flipped else c)(padded[label, :, dy:dy + 6, dx:dx + 6]))
                ]
                assert matches, f"sample {label} is no crop/flip of its source"
                seen_offsets.add(matches[0][:2])
                seen_flips.add(matches[0][2])
    assert seen_flips == {False, True} and len(seen_offsets) >= 5


def test_eval_loader_yields_unaugmented_images():
    loader = indexed_loader(10, batch_size=10, train=False, padding=3, flip=True)
    images, labels = next(iter(loader))
    assert torch.equal(images, normalise(loader.images, (0.5, 0.5), (0.25, 0.25)))
    assert labels.tolist() == list(range(10))


def test_probe_batch_fixed_and_rank_independent():
    cfg = DataConfig(name="digits")
    a = build_data(cfg, rank=0, world_size=2)
    b = build_data(cfg, rank=1, world_size=2)
    probe = probe_batch(a, 8)
    assert probe.shape == (8, 1, 8, 8) and probe.dtype == torch.float32
    assert torch.equal(probe, probe_batch(b, 8)) and torch.equal(probe, probe_batch(a, 8))
    assert probe_batch(a, 10_000).shape[0] == 360


def test_bad_rank_is_an_error():
    with pytest.raises(PolarpruneError, match="rank 2"):
        build_data(DataConfig(name="fake"), rank=2, world_size=2)


# ----------------------------------------------------------------------------- fake


def test_fake_data_sizes_and_determinism():
    cfg = DataConfig(name="fake", num_classes=4, channels=2, image_size=16, train_subset=40, eval_subset=24, batch_size=8)
    a = build_data(cfg)
    b = build_data(cfg, seed=9)
    assert (a.num_classes, a.in_channels, a.input_size, a.train_size, a.eval_size) == (4, 2, (16, 16), 40, 24)
    assert torch.equal(a.train_loader.images, b.train_loader.images)
    images, labels = next(iter(a.eval_loader))
    assert images.shape == (24, 2, 16, 16) and int(labels.max()) < 4
    default = build_data(DataConfig(name="fake"))
    assert (default.train_size, default.eval_size, default.input_size) == (512, 256, (32, 32))


# ----------------------------------------------------------------------------- CIFAR


def _pickled_images(path: Path, key: bytes = b"data") -> np.ndarray:
    with open(path, "rb") as handle:
        entry = pickle.load(handle, encoding="bytes")
    return entry[key].reshape(-1, 3, 32, 32)


def test_cifar10_fixture_reads_with_exact_pixels(tmp_path: Path):
    root = make_cifar10(tmp_path / "c10", n_train=40, n_test=20)
    bundle = build_data(DataConfig(name="cifar10", root=str(root), batch_size=16, eval_batch_size=32))
    assert (bundle.num_classes, bundle.in_channels, bundle.input_size) == (10, 3, (32, 32))
    assert (bundle.train_size, bundle.eval_size) == (40, 20)
    assert bundle.class_names[0] == "airplane" and bundle.mean == pdata.CIFAR10_MEAN
    assert len(bundle.train_loader) == 2
    images, labels = next(iter(bundle.eval_loader))
    mean = torch.tensor(bundle.mean).view(1, 3, 1, 1)
    std = torch.tensor(bundle.std).view(1, 3, 1, 1)
    raw = torch.round((images * std + mean) * 255).to(torch.uint8).numpy()
    assert np.array_equal(raw, _pickled_images(root / "cifar-10-batches-py" / "test_batch"))
    x, y = next(iter(bundle.train_loader))
    assert x.shape == (16, 3, 32, 32) and y.dtype == torch.int64


def test_cifar100_fixture_reads_fine_labels(tmp_path: Path):
    root = make_cifar100(tmp_path / "c100", n_train=100, n_test=50)
    bundle = build_data(DataConfig(name="cifar100", root=str(root), batch_size=20))
    assert (bundle.num_classes, bundle.train_size, bundle.eval_size) == (100, 100, 50)
    with open(root / "cifar-100-python" / "test", "rb") as handle:
        fine = pickle.load(handle, encoding="bytes")[b"fine_labels"]
    assert bundle.eval_loader.labels.tolist() == fine
    assert bundle.mean == pdata.CIFAR100_MEAN


def test_cifar_missing_folder_names_the_path(tmp_path: Path):
    with pytest.raises(PolarpruneError) as info:
        build_data(DataConfig(name="cifar10", root=str(tmp_path / "nowhere")))
    message = str(info.value)
    assert str(tmp_path / "nowhere" / "cifar-10-batches-py") in message and "\n" not in message


def test_cifar_download_failure_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import torchvision.datasets.cifar as tv_cifar

    def no_network(*args, **kwargs):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", no_network)
    with pytest.raises(PolarpruneError, match="missing and the download failed") as info:
        build_data(DataConfig(name="cifar100", root=str(tmp_path / "dl"), download=True))
    assert "cifar-100-python" in str(info.value) and "\n" not in str(info.value)


def test_cifar_corrupt_pickle_is_one_line(tmp_path: Path):
    root = make_cifar10(tmp_path / "bad", n_train=10, n_test=10)
    (root / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(PolarpruneError, match="cannot read the CIFAR pickles"):
        build_data(DataConfig(name="cifar10", root=str(root)))


# ----------------------------------------------------------------------------- ImageFolder


def test_imagefolder_small_images_decoded_once_and_cached(tmp_path: Path, private_cache: Path,
                                                          monkeypatch: pytest.MonkeyPatch):
    root = make_imagefolder(tmp_path / "if", n_per_class=6, size=16, classes=3)
    calls = []
    from polarprune.data import imagefolder

    real_decode = imagefolder.decode_images
    monkeypatch.setattr(imagefolder, "decode_images", lambda paths, size: calls.append(len(paths)) or real_decode(paths, size))
    cfg = DataConfig(name="imagefolder", root=str(root), batch_size=6, eval_batch_size=18)
    first = build_data(cfg)
    assert calls == [18, 18]
    assert sorted(p.name.split("-")[1] for p in (private_cache / "decoded").glob("*.npz")) == ["train", "val"]
    assert (first.num_classes, first.input_size, first.class_names) == (3, (16, 16), ["class0", "class1", "class2"])
    assert isinstance(first.train_loader, InMemoryLoader) and first.train_loader.padding == 2
    # the decoded pixels are the PNG's pixels
    png = np.asarray(Image.open(root / "val" / "class1" / "0000.png"))
    assert np.array_equal(first.eval_loader.images[6].permute(1, 2, 0).numpy(), png)
    second = build_data(cfg)
    assert calls == [18, 18]  # served from the cache
    assert torch.equal(first.eval_loader.images, second.eval_loader.images)
    assert torch.equal(first.train_loader.labels, second.train_loader.labels)
    # a changed tree (one more image) gets decoded again
    Image.fromarray(png).save(root / "val" / "class2" / "9999.png")
    third = build_data(cfg)
    assert calls == [18, 18, 19] and third.eval_size == 19


def pil_eval_image(path: Path, size: int) -> torch.Tensor:
    """The evaluation transform by hand with PIL and numpy: decode, resize the 72 px square to
    round(size * 256 / 224) (bilinear), crop the centre ``size`` square, scale to [0, 1], normalise."""
    side = int(round(size * 256 / 224))
    with Image.open(path) as image:
        resized = image.convert("RGB").resize((side, side), Image.BILINEAR)
    top = int(round((side - size) / 2))
    pixels = np.asarray(resized.crop((top, top, top + size, top + size)), dtype=np.float32) / 255.0
    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
    return torch.from_numpy(((pixels - mean) / std).transpose(2, 0, 1).copy())


def test_imagefolder_large_images_use_the_file_loader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from polarprune.data.loaders import FolderLoader

    root = make_imagefolder(tmp_path / "big", n_per_class=3, size=72, classes=2, split_names=("train", "test"), fmt="jpg")
    cfg = DataConfig(name="imagefolder", root=str(root), batch_size=2, eval_batch_size=4, workers=0)
    opened: list[Path] = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda path, *a, **k: opened.append(Path(path)) or real_open(path, *a, **k))
    bundle = build_data(cfg)
    assert isinstance(bundle.train_loader, FolderLoader) and isinstance(bundle.eval_loader, FolderLoader)
    assert bundle.input_size == (224, 224) and (bundle.train_size, bundle.eval_size) == (6, 6)
    assert len(bundle.train_loader) == 3 and len(bundle.eval_loader) == 2
    bundle.train_loader.set_epoch(1)
    opened.clear()
    first = all_batches(bundle.train_loader)
    train_files = sorted((root / "train").glob("*/*.jpg"))
    assert sorted(opened) == train_files  # every epoch decodes each file once: nothing was held in memory
    assert first[0][0].shape == (2, 3, 224, 224) and first[0][1].dtype == torch.int64
    torch.manual_seed(123)
    assert same_batches(first, all_batches(bundle.train_loader))  # seeded per sample, not by global RNG
    opened.clear()
    evaluated = all_batches(bundle.eval_loader)
    eval_files = sorted((root / "test").glob("*/*.jpg"))
    assert opened == eval_files  # in order, once each
    images = torch.cat([x for x, _ in evaluated])
    assert images.shape == (6, 3, 224, 224)
    assert torch.cat([y for _, y in evaluated]).tolist() == [0, 0, 0, 1, 1, 1]
    expected = torch.stack([pil_eval_image(path, 224) for path in eval_files])
    assert float((images - expected).abs().max()) < 1e-5  # the pixels are the JPEG decode's
    assert torch.equal(probe_batch(bundle, 6), images)
    assert probe_batch(bundle, 3).shape == (3, 3, 224, 224)
    small = build_data(cfg.model_copy(update={"image_size": 64}))
    assert next(iter(small.train_loader))[0].shape == (2, 3, 64, 64)
    assert float((torch.cat([x for x, _ in small.eval_loader]) - torch.stack([pil_eval_image(p, 64) for p in eval_files])).abs().max()) < 1e-5


def test_file_loader_two_ranks_equal_one_rank_of_double_batch(tmp_path: Path):
    root = make_imagefolder(tmp_path / "big", n_per_class=4, size=72, classes=2, split_names=("train", "val"))
    cfg = DataConfig(name="imagefolder", root=str(root), image_size=24, workers=0)
    single = build_data(cfg.model_copy(update={"batch_size": 4}), seed=5)
    ranks = [build_data(cfg.model_copy(update={"batch_size": 2}), seed=5, rank=r, world_size=2) for r in range(2)]
    for bundle in (single, *ranks):
        bundle.train_loader.set_epoch(3)
    assert len(single.train_loader) == len(ranks[0].train_loader) == 2
    for (x, y), (x0, y0), (x1, y1) in zip(single.train_loader, ranks[0].train_loader, ranks[1].train_loader):
        assert torch.equal(x, torch.cat([x0, x1])) and torch.equal(y, torch.cat([y0, y1]))


@pytest.mark.parametrize("size,workers", [(72, 1), (8, 0)])
def test_unreadable_image_is_one_line_naming_the_file(tmp_path: Path, size: int, workers: int):
    root = make_imagefolder(tmp_path / "if", n_per_class=2, size=size, classes=2)
    broken = root / "val" / "class1" / "0001.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(PolarpruneError) as info:
        bundle = build_data(DataConfig(name="imagefolder", root=str(root), image_size=16, workers=workers))
        list(bundle.eval_loader)  # the file loader reads it in a worker process
    message = str(info.value)
    assert message.startswith(f"{broken}: cannot read the image") and "\n" not in message


def test_unreadable_image_is_one_line_also_after_ultralytics_patched_pil(tmp_path: Path) -> None:
    """Importing ultralytics replaces ``PIL.Image.open`` with a wrapper that, on an unidentified file, imports a
    HEIF plugin (absent here: ImportError); the loader still says which file it cannot read, in one line."""
    pytest.importorskip("ultralytics")
    import PIL.Image

    import ultralytics.utils.patches  # noqa: F401  (the patch is installed on import)

    if getattr(PIL.Image.open, "__module__", "") != "ultralytics.utils.patches":
        pytest.skip("this ultralytics does not patch PIL.Image.open")
    root = make_imagefolder(tmp_path / "if", n_per_class=2, size=8, classes=2)
    broken = root / "val" / "class1" / "0001.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(PolarpruneError) as info:
        list(build_data(DataConfig(name="imagefolder", root=str(root), image_size=16, workers=0)).eval_loader)
    assert str(info.value).startswith(f"{broken}: cannot read the image") and "\n" not in str(info.value)


def test_imagefolder_missing_root_names_the_path(tmp_path: Path):
    with pytest.raises(PolarpruneError, match=str(tmp_path / "absent")):
        build_data(DataConfig(name="imagefolder", root=str(tmp_path / "absent")))
    (tmp_path / "only_train" / "train" / "a").mkdir(parents=True)
    with pytest.raises(PolarpruneError, match="val"):
        build_data(DataConfig(name="imagefolder", root=str(tmp_path / "only_train")))


def test_imagefolder_unknown_eval_class_is_an_error(tmp_path: Path):
    root = make_imagefolder(tmp_path / "if", n_per_class=2, size=8, classes=2)
    (root / "val" / "stray").mkdir()
    with pytest.raises(PolarpruneError, match="stray"):
        build_data(DataConfig(name="imagefolder", root=str(root)))


# ----------------------------------------------------------------------------- archives


def _tiny_archive(path: Path, top: str = "") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for split in ("train", "test"):
            for label in ("a", "b"):
                buffer = io.BytesIO()
                Image.new("RGB", (8, 8), (40 * len(label), 0, 0)).save(buffer, format="PNG")
                info = tarfile.TarInfo(f"{top}{split}/{label}/0.png")
                info.size = buffer.tell()
                buffer.seek(0)
                tar.addfile(info, buffer)
    return path


def test_ensure_extracted_once_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    archive = _tiny_archive(tmp_path / "tiny.tar.gz", top="tiny/")
    cache = tmp_path / "xcache"
    folder = ensure_extracted(archive, cache)
    assert (folder / "train" / "a" / "0.png").is_file() and (folder / "test").is_dir()
    assert [p.name for p in (cache / "extracted").iterdir() if p.name.startswith(".")] == []  # no partial folder left
    monkeypatch.setattr(tarfile, "open", lambda *a, **k: pytest.fail("extracted twice"))
    assert ensure_extracted(archive, cache) == folder


def test_interrupted_extraction_leaves_nothing_that_looks_complete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    archive = _tiny_archive(tmp_path / "tiny.tar.gz")
    cache = tmp_path / "xcache"

    class Boom(tarfile.TarFile):
        def extractall(self, *args, **kwargs):
            super().extractall(*args, **kwargs)
            raise OSError("disk full")

    monkeypatch.setattr(tarfile, "open", lambda path: Boom.open(path))
    with pytest.raises(PolarpruneError, match="cannot extract"):
        ensure_extracted(archive, cache)
    assert list((cache / "extracted").iterdir()) == []
    monkeypatch.undo()
    assert (ensure_extracted(archive, cache) / "train").is_dir()


def test_imagefolder_root_may_be_an_archive(tmp_path: Path, private_cache: Path):
    archive = _tiny_archive(tmp_path / "tiny.tar.gz")
    bundle = build_data(DataConfig(name="imagefolder", root=str(archive), batch_size=2))
    assert (bundle.num_classes, bundle.train_size, bundle.eval_size) == (2, 2, 2)
    assert any((private_cache / "extracted").iterdir())


def test_default_archive_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    archive = tmp_path / "x.tar.gz"
    archive.write_bytes(b"")
    monkeypatch.setenv(pdata.ARCHIVE_ENV, str(archive))
    assert default_cifar10_archive() == archive
    monkeypatch.setenv(pdata.ARCHIVE_ENV, str(tmp_path / "missing.tar.gz"))
    assert default_cifar10_archive() is None


@pytest.mark.integration
def test_real_cifar10_archive(monkeypatch: pytest.MonkeyPatch):
    archive = default_cifar10_archive()
    if archive is None:
        pytest.skip("the shared CIFAR-10 archive is not available")
    monkeypatch.delenv(pdata.CACHE_ENV)  # the user's cache: extract and decode once for all runs
    root = ensure_extracted(archive)
    bundle = build_data(DataConfig(name="imagefolder", root=str(root), train_subset=500, eval_subset=200, batch_size=50))
    assert bundle.num_classes == 10 and bundle.class_names[0] == "airplane"
    assert bundle.input_size == (32, 32) and bundle.in_channels == 3
    assert (bundle.train_size, bundle.eval_size) == (500, 200)
    assert np.bincount(bundle.eval_loader.labels.numpy()).tolist() == [20] * 10
    images, labels = next(iter(bundle.train_loader))
    assert images.shape == (50, 3, 32, 32) and bundle.train_loader.padding == 4
    assert all(abs(m - c) < 0.02 for m, c in zip(bundle.mean, pdata.CIFAR10_MEAN))
    assert all(abs(s - c) < 0.02 for s, c in zip(bundle.std, pdata.CIFAR10_STD))


@pytest.mark.parametrize("size", [16, 72])  # decoded into memory / read from files
def test_eval_only_needs_just_the_evaluation_split(tmp_path: Path, size: int) -> None:
    """``eval`` on a tree with only ``val/``: the evaluation split alone is read, classes from its folders."""
    root = make_imagefolder(tmp_path / "valonly", n_per_class=3, size=size, classes=3, split_names=("val",))
    cfg = DataConfig(name="imagefolder", root=str(root), eval_batch_size=4, image_size=32 if size > 64 else None,
                     mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), workers=0)
    with pytest.raises(PolarpruneError, match="valonly/train not found"):
        build_data(cfg)  # training needs train/
    bundle = build_data(cfg, eval_only=True)
    assert (bundle.train_size, bundle.eval_size) == (0, 9)
    assert bundle.class_names == ["class0", "class1", "class2"] and bundle.num_classes == 3
    images, labels = (torch.cat(parts) for parts in zip(*all_batches(bundle.eval_loader)))
    assert labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    side = 32 if size > 64 else size  # large images: cropped to image_size
    assert images.shape == (9, 3, side, side)
    if size <= 64:  # exactly the files, normalised by the config's mean/std
        first = np.asarray(Image.open(root / "val" / "class0" / "0000.png"), dtype=np.float64) / 255.0
        expected = torch.from_numpy((first - 0.5) / 0.25).permute(2, 0, 1).float()
        assert torch.allclose(images[0], expected, atol=1e-5)
    # a tree with train/ evaluates exactly as before: eval_only changes nothing there
    full = make_imagefolder(tmp_path / "full", n_per_class=3, size=16, classes=3)
    both = build_data(DataConfig(name="imagefolder", root=str(full), eval_batch_size=4))
    alone = build_data(DataConfig(name="imagefolder", root=str(full), eval_batch_size=4), eval_only=True)
    assert both.mean == alone.mean and same_batches(all_batches(both.eval_loader), all_batches(alone.eval_loader))


def test_loader_processes_never_outnumber_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    """``data.workers`` (default 4) is capped at the machine's cores: on 2 cores, 2 processes (torch warns
    about more and they only contend); 0 stays in-process."""
    from polarprune.data import loaders

    monkeypatch.setattr(loaders.os, "cpu_count", lambda: 2)
    assert [loaders.usable_workers(n) for n in (0, 1, 2, 4, 8)] == [0, 1, 2, 2, 2]
    monkeypatch.setattr(loaders.os, "cpu_count", lambda: None)
    assert loaders.usable_workers(4) == 1
