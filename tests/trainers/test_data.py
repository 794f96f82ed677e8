"""Tests for ``trainers.data``: real on-disk formats written small, loaders, determinism, specs."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
import torchvision.transforms.functional as TF
from pydantic import ValidationError

from trainers.data import DATASETS, DataSpec, build, check_data, split_indices
from trainers.data.loader import crop_flip, cutout

CIFAR10_MEAN = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
CIFAR10_STD = torch.tensor([0.2471, 0.2435, 0.2616]).view(1, 3, 1, 1)

# --- writers of the genuine formats ----------------------------------------------------------
# The published CIFAR batches are Python 2 pickles of dicts; torchvision unpickles them with
# encoding="latin1", which turns their keys into str. Pickling str keys gives the same objects.


def _pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar10(
    root: Path, n_train: int = 20, n_test: int = 10, pixel: int | None = None
) -> dict[str, np.ndarray]:
    """``cifar-10-batches-py`` with five train batches, a test batch and batches.meta.

    Random pixels, or every training pixel equal to ``pixel``."""
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train_x = rng.integers(0, 256, (n_train, 3072), dtype=np.uint8)
    if pixel is not None:
        train_x[:] = pixel
    data = {
        "train_x": train_x,
        "train_y": rng.integers(0, 10, n_train),
        "test_x": rng.integers(0, 256, (n_test, 3072), dtype=np.uint8),
        "test_y": rng.integers(0, 10, n_test),
    }
    per = n_train // 5
    for i in range(5):
        sl = slice(i * per, (i + 1) * per)
        _pickle(
            folder / f"data_batch_{i + 1}",
            {
                "batch_label": f"training batch {i + 1} of 5",
                "labels": data["train_y"][sl].tolist(),
                "data": data["train_x"][sl],
                "filenames": [f"img_{j}.png" for j in range(per)],
            },
        )
    _pickle(
        folder / "test_batch",
        {
            "batch_label": "testing batch 1 of 1",
            "labels": data["test_y"].tolist(),
            "data": data["test_x"],
            "filenames": [f"img_{j}.png" for j in range(n_test)],
        },
    )
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship"]
    _pickle(folder / "batches.meta", {"label_names": [*names, "truck"], "num_vis": 3072})
    return data


def write_cifar100(root: Path, n_train: int = 20, n_test: int = 10) -> dict[str, np.ndarray]:
    """``cifar-100-python`` with train, test and meta."""
    rng = np.random.default_rng(1)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    data = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        fine = rng.integers(0, 100, n)
        fine[0] = 99  # the top label must survive
        data[f"{split}_x"], data[f"{split}_y"] = x, fine
        _pickle(
            folder / split,
            {
                "filenames": [f"img_{j}.png" for j in range(n)],
                "batch_label": f"{split} batch",
                "fine_labels": fine.tolist(),
                "coarse_labels": (fine // 5).tolist(),
                "data": x,
            },
        )
    _pickle(
        folder / "meta",
        {
            "fine_label_names": [f"c{i}" for i in range(100)],
            "coarse_label_names": [f"s{i}" for i in range(20)],
        },
    )
    return data


def write_svhn(root: Path, n_train: int = 20, n_test: int = 10) -> dict[str, np.ndarray]:
    """``train_32x32.mat``/``test_32x32.mat``: X (32, 32, 3, N) uint8, y (N, 1) in 1..10."""
    rng = np.random.default_rng(2)
    root.mkdir(parents=True, exist_ok=True)
    data = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = rng.integers(1, 11, (n, 1)).astype(np.uint8)
        y[0, 0] = 10  # SVHN's label for the digit 0
        scipy.io.savemat(root / f"{split}_32x32.mat", {"X": x, "y": y})
        data[f"{split}_x"], data[f"{split}_y"] = x, y
    return data


def _cat(loader) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*list(loader), strict=True)
    return torch.cat(xs), torch.cat(ys)


def _epoch(loader, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader.set_epoch(epoch)
    return list(loader)


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b, strict=True)
    )


@pytest.fixture
def cifar10(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    return tmp_path, write_cifar10(tmp_path)


# --- real formats -----------------------------------------------------------------------------


@pytest.mark.parametrize("device_resident", [True, False])
def test_cifar10_reads_real_format(cifar10, device_resident: bool) -> None:
    root, data = cifar10
    spec = DataSpec(name="cifar10", root=str(root), device_resident=device_resident, val_fraction=0)
    b = build(spec, batch_size=8, device="cpu", seed=0)
    assert (b.num_train, b.num_test, b.num_classes, b.in_shape) == (20, 10, 10, (3, 32, 32))
    assert b.val is None and b.num_val == 0
    assert (len(b.train), len(b.test)) == (3, 2)  # drop_last=False: 8 + 8 + 4
    x, y = _cat(b.test)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    # Rows are 1024 R, then G, then B values, each a row-major 32x32 plane.
    raw = torch.from_numpy(data["test_x"]).view(-1, 3, 32, 32).float() / 255
    torch.testing.assert_close(x, (raw - CIFAR10_MEAN) / CIFAR10_STD)
    assert y.tolist() == data["test_y"].tolist()
    xtr, ytr = _cat(b.train)
    assert xtr.shape == (20, 3, 32, 32) and [len(yb) for _, yb in b.train] == [8, 8, 4]
    assert sorted(ytr.tolist()) == sorted(data["train_y"].tolist())  # a permutation


def test_cifar10_normalisation_is_roughly_standard(tmp_path: Path) -> None:
    # Uniform pixels have mean 0.5 and std 0.29, close to CIFAR's statistics.
    write_cifar10(tmp_path, n_train=200, n_test=10)
    b = build(
        DataSpec(name="cifar10", root=str(tmp_path), augment=False, val_fraction=0),
        batch_size=50,
        device="cpu",
        seed=0,
    )
    x, _ = _cat(b.train)
    assert x.mean().abs() < 0.25 and 0.9 < x.std() < 1.4


def test_cifar100_reads_real_format(tmp_path: Path) -> None:
    data = write_cifar100(tmp_path)
    b = build(DataSpec(name="cifar100", root=str(tmp_path)), batch_size=6, device="cpu", seed=0)
    assert (b.num_train, b.num_val, b.num_test) == (18, 2, 10)  # val_fraction 0.1 of 20
    assert (b.num_classes, b.in_shape) == (100, (3, 32, 32))
    x, y = _cat(b.test)
    assert y.tolist() == data["test_y"].tolist() and y.max() == 99
    mean = torch.tensor([0.5071, 0.4865, 0.4409]).view(1, 3, 1, 1)
    std = torch.tensor([0.2673, 0.2564, 0.2762]).view(1, 3, 1, 1)
    raw = torch.from_numpy(data["test_x"]).view(-1, 3, 32, 32).float() / 255
    torch.testing.assert_close(x, (raw - mean) / std)


def test_svhn_reads_real_format_and_maps_10_to_0(tmp_path: Path) -> None:
    data = write_svhn(tmp_path)
    b = build(DataSpec(name="svhn", root=str(tmp_path)), batch_size=4, device="cpu", seed=0)
    assert (b.num_train, b.num_val, b.num_test) == (18, 2, 10)
    assert (b.num_classes, b.in_shape) == (10, (3, 32, 32))
    x, y = _cat(b.test)
    expected = data["test_y"][:, 0].astype(np.int64) % 10
    assert y.tolist() == expected.tolist() and y[0] == 0 and 0 <= y.min() and y.max() <= 9
    # X is (H, W, C, N); the loader serves (N, C, H, W).
    raw = torch.from_numpy(data["test_x"]).permute(3, 2, 0, 1).float() / 255
    mean = torch.tensor([0.4377, 0.4438, 0.4728]).view(1, 3, 1, 1)
    std = torch.tensor([0.198, 0.201, 0.197]).view(1, 3, 1, 1)
    torch.testing.assert_close(x, (raw - mean) / std)
    _, ytr = _cat(b.train)
    assert ytr.min() >= 0 and ytr.max() <= 9


def test_subsets_are_the_first_examples(cifar10) -> None:
    root, data = cifar10
    spec = DataSpec(name="cifar10", root=str(root), num_train=7, num_test=3)
    b = build(spec, batch_size=4, device="cpu", seed=0, test_batch_size=2)
    # num_train is the pool: round(0.1 * 7) = 1 validation example is carved from it.
    assert (b.num_train, b.num_val, b.num_test, len(b.train), len(b.test)) == (6, 1, 3, 2, 2)
    assert _cat(b.test)[1].tolist() == data["test_y"][:3].tolist()
    assert sorted(_cat(b.train)[1].tolist() + _cat(b.val)[1].tolist()) == sorted(
        data["train_y"][:7].tolist()
    )
    with pytest.raises(ValueError, match="num_train must be at most 20"):
        build(spec.model_copy(update={"num_train": 21}), batch_size=4, device="cpu", seed=0)


# --- augmentation and epoch replay ------------------------------------------------------------


def test_augmentation_changes_train_batches_not_test(cifar10) -> None:
    root, _ = cifar10
    plain = build(
        DataSpec(name="cifar10", root=str(root), augment=False), batch_size=8, device="cpu", seed=0
    )
    aug = build(
        DataSpec(name="cifar10", root=str(root), cutout=8), batch_size=8, device="cpu", seed=0
    )
    xp, yp = _cat(plain.train)
    xa, ya = _cat(aug.train)
    assert torch.equal(yp, ya)  # the order is drawn first, so augmentation does not move it
    assert not torch.equal(xp, xa)
    assert (xa == 0).all(dim=1).flatten(1).any(dim=1).float().mean() > 0.5  # Cutout squares
    for (x1, y1), (x2, y2) in zip(plain.test, aug.test, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


@pytest.mark.parametrize(
    "options",
    [{}, {"cutout": 8}, {"device_resident": False}, {"autoaugment": True, "cutout": 8}],
    ids=["device", "device-cutout", "fallback", "fallback-autoaugment"],
)
def test_set_epoch_replays_the_epoch(cifar10, options: dict) -> None:
    root, _ = cifar10
    spec = DataSpec(name="cifar10", root=str(root), **options)
    b = build(spec, batch_size=8, device="cpu", seed=3)
    e3 = _epoch(b.train, 3)
    assert _same(e3, _epoch(b.train, 3))
    assert not _same(e3, _epoch(b.train, 4))
    # A resumed run builds fresh loaders and jumps to epoch 3: the same batches.
    resumed = build(spec, batch_size=8, device="cpu", seed=3)
    assert _same(e3, _epoch(resumed.train, 3))
    # Another seed, another epoch 3.
    other = build(spec, batch_size=8, device="cpu", seed=4)
    assert not _same(e3, _epoch(other.train, 3))


def test_passes_advance_the_epoch_without_set_epoch(cifar10) -> None:
    root, _ = cifar10
    b = build(DataSpec(name="cifar10", root=str(root)), batch_size=8, device="cpu", seed=0)
    first, second = list(b.train), list(b.train)
    assert not _same(first, second)
    assert _same(first, _epoch(b.train, 0)) and _same(second, _epoch(b.train, 1))
    with pytest.raises(ValueError, match="epoch must be >= 0"):
        b.train.set_epoch(-1)


def test_fallback_matches_device_path_where_it_can(cifar10) -> None:
    root, _ = cifar10
    dev = build(DataSpec(name="cifar10", root=str(root)), batch_size=8, device="cpu", seed=1)
    cpu = build(
        DataSpec(name="cifar10", root=str(root), device_resident=False),
        batch_size=8,
        device="cpu",
        seed=1,
    )
    torch.testing.assert_close(_cat(dev.test), _cat(cpu.test))
    xd, yd = _cat(dev.train)
    xc, yc = _cat(cpu.train)
    assert xd.shape == xc.shape and xc.dtype == torch.float32 and torch.equal(yd, yc)


@pytest.mark.parametrize("pad_mode", ["zeros", "grey", "reflect"])
@pytest.mark.parametrize("flip", [False, True])
def test_crop_flip_matches_torchvision(flip: bool, pad_mode: str) -> None:
    x = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    dy, dx = torch.tensor([0, 8, 3, 4, 7]), torch.tensor([8, 0, 5, 4, 1])
    out = crop_flip(x, dy, dx, torch.full((5,), flip), padding=4, pad_mode=pad_mode)
    fill = 128 if pad_mode == "grey" else 0
    mode = "reflect" if pad_mode == "reflect" else "constant"
    for i in range(5):
        padded = TF.pad(x[i], [4], fill=fill, padding_mode=mode)
        ref = TF.crop(padded, int(dy[i]), int(dx[i]), 32, 32)
        assert torch.equal(out[i], TF.hflip(ref) if flip else ref)


def test_pad_modes_on_a_tiny_image() -> None:
    x = torch.arange(9, dtype=torch.uint8).view(1, 1, 3, 3)  # [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    corner = torch.zeros(1, dtype=torch.long)  # the crop's top-left is the padded top-left
    no_flip = torch.zeros(1, dtype=torch.bool)
    expected = {
        "zeros": [[0, 0, 0], [0, 0, 1], [0, 3, 4]],
        "grey": [[128, 128, 128], [128, 0, 1], [128, 3, 4]],
        # Reflection does not repeat the edge: row -1 reads row 1, column -1 reads column 1.
        "reflect": [[4, 3, 4], [1, 0, 1], [4, 3, 4]],
    }
    for mode, rows in expected.items():
        out = crop_flip(x, corner, corner, no_flip, padding=1, pad_mode=mode)
        assert out[0, 0].tolist() == rows, mode
    grey = crop_flip(x.float() / 255, corner, corner, no_flip, padding=1, pad_mode="grey")
    assert grey[0, 0, 0, 0] == pytest.approx(128 / 255)  # float images: grey in [0, 1] units
    with pytest.raises(ValueError, match="crop_padding must be less than the image side 3"):
        crop_flip(x, corner, corner, no_flip, padding=3, pad_mode="reflect")


@pytest.mark.parametrize("device_resident", [True, False], ids=["device", "fallback"])
def test_pad_mode_and_crop_padding_reach_both_paths(tmp_path: Path, device_resident: bool) -> None:
    # Every training pixel is 200, so the only other values a crop can show are the border's.
    write_cifar10(tmp_path, n_train=40, pixel=200)
    mean, std = CIFAR10_MEAN, CIFAR10_STD
    seen = {}
    for mode in ("zeros", "grey", "reflect"):
        spec = DataSpec(
            name="cifar10",
            root=str(tmp_path),
            pad_mode=mode,
            crop_padding=2,
            device_resident=device_resident,
            val_fraction=0,
        )
        x, _ = _cat(build(spec, batch_size=8, device="cpu", seed=0).train)
        pixels = ((x * std + mean) * 255).round().to(torch.int64)
        seen[mode] = set(pixels.unique().tolist())
        # A 2-px border: no crop shows more than two padded rows (a 4-px one would show 4).
        border_rows = (pixels != 200).all(dim=(1, 3)).sum(dim=1)
        assert int(border_rows.max()) <= 2, mode
    assert seen == {"zeros": {0, 200}, "grey": {128, 200}, "reflect": {200}}
    with pytest.raises(ValueError, match="crop_padding must be less than the image side 32"):
        spec = DataSpec(name="cifar10", root=str(tmp_path), pad_mode="reflect", crop_padding=32)
        build(spec, batch_size=8, device="cpu", seed=0)


def test_cutout_square_is_clipped_at_the_border() -> None:
    x = torch.ones(2, 3, 32, 32)
    out = cutout(x, torch.tensor([16, 0]), torch.tensor([16, 31]), 16)
    assert (out[0] == 0).all(0).sum() == 16 * 16 and (out[0, :, 8:24, 8:24] == 0).all()
    # Rows -8..7 clip to 0..7; columns 23..38 clip to 23..31.
    assert (out[1] == 0).all(0).sum() == 8 * 9 and (out[1, :, :8, 23:] == 0).all()


# --- roots ------------------------------------------------------------------------------------


def test_missing_root_names_the_root(tmp_path: Path) -> None:
    missing = str(tmp_path / "nowhere")
    spec = DataSpec(name="cifar10", root=missing)  # validates: roots are checked on use
    with pytest.raises(ValueError, match="nowhere.*does not exist.*cifar10"):
        check_data(spec)
    with pytest.raises(ValueError, match="nowhere"):
        build(spec, batch_size=8, device="cpu", seed=0)
    check_data(spec.model_copy(update={"download": True}))  # torchvision would fetch it


def test_root_without_files_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="test_32x32.mat"):
        check_data(DataSpec(name="svhn", root=str(tmp_path)))


# --- generated and bundled datasets -----------------------------------------------------------


def test_mnist1d_is_generated_offline_and_seeded(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FLATSWEEP_CACHE_DIR", str(tmp_path / "cache"))  # generate, not load
    np.random.seed(123)
    expected_next = np.random.rand()
    np.random.seed(123)
    spec = DataSpec(name="mnist1d", num_train=100, num_test=55)
    a = build(spec, batch_size=32, device="cpu", seed=0)
    assert np.random.rand() == expected_next  # the caller's global RNG is given back
    assert (a.num_train, a.num_val, a.num_test) == (90, 10, 55)
    assert (a.num_classes, a.in_shape) == (10, (1, 40))
    x, y = _cat(a.test)
    assert x.shape == (55, 1, 40) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert set(_cat(a.train)[1].tolist()) <= set(range(10))
    b = build(spec, batch_size=32, device="cpu", seed=0)
    torch.testing.assert_close(_cat(a.test), _cat(b.test), rtol=0, atol=0)
    c = build(spec.model_copy(update={"seed": 1}), batch_size=32, device="cpu", seed=0)
    assert not torch.equal(_cat(a.test)[0], _cat(c.test)[0])
    assert os.listdir(tmp_path) == ["cache"]  # make_dataset, not get_dataset: no pickle here


def _clear_process_cache() -> None:
    from trainers.data import _build

    _build._CACHE.clear()


def test_mnist1d_cache_returns_what_generation_gives(tmp_path: Path, monkeypatch) -> None:
    from trainers.data import datasets

    monkeypatch.setenv("FLATSWEEP_CACHE_DIR", str(tmp_path))
    _clear_process_cache()
    spec = DataSpec(name="mnist1d", num_train=100, num_test=50, seed=3)
    first = build(spec, batch_size=50, device="cpu", seed=0)
    (cached,) = list(tmp_path.glob("*.npz"))
    assert not list(tmp_path.glob(".*.tmp"))  # written then renamed

    def no_generation(*a: object) -> None:
        raise AssertionError("a cached dataset was generated again")

    monkeypatch.setattr(datasets, "_generate_mnist1d", no_generation)
    _clear_process_cache()
    second = build(spec, batch_size=50, device="cpu", seed=0)
    for a, b in [(first.train, second.train), (first.test, second.test)]:
        torch.testing.assert_close(_cat(a), _cat(b), rtol=0, atol=0)

    # A half-written or foreign file is not trusted: it is regenerated, to the same arrays.
    monkeypatch.undo()
    monkeypatch.setenv("FLATSWEEP_CACHE_DIR", str(tmp_path))
    cached.write_bytes(cached.read_bytes()[:100])
    _clear_process_cache()
    third = build(spec, batch_size=50, device="cpu", seed=0)
    torch.testing.assert_close(_cat(first.test), _cat(third.test), rtol=0, atol=0)
    assert np.load(cached)["x"].shape == (150, 40)


def test_mnist1d_works_when_the_cache_cannot_be_written(tmp_path: Path, monkeypatch) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("FLATSWEEP_CACHE_DIR", str(blocker / "cache"))
    _clear_process_cache()
    b = build(
        DataSpec(name="mnist1d", num_train=20, num_test=10), batch_size=10, device="cpu", seed=0
    )
    assert (b.num_train + b.num_val, b.num_test) == (20, 10)


def test_mnist1d_defaults_are_the_reference_sizes(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    b = build(DataSpec(name="mnist1d"), batch_size=1000, device="cpu", seed=0)
    assert (b.num_train, b.num_val, b.num_test) == (3600, 400, 1000)  # a 4000 pool, 10% val
    assert os.listdir(tmp_path) == []


def test_digits_split_and_standardisation() -> None:
    b = build(DataSpec(name="digits"), batch_size=500, device="cpu", seed=0)
    assert (b.num_train + b.num_val, b.num_val, b.num_test) == (1437, 144, 360)
    assert (b.num_classes, b.in_shape) == (10, (1, 8, 8))
    # Standardised with the statistics of the whole training pool (train and validation).
    x, y = torch.cat([_cat(b.train)[0], _cat(b.val)[0]]), _cat(b.train)[1]
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1) < 1e-3
    assert set(y.tolist()) == set(range(10))
    other = build(DataSpec(name="digits", seed=1), batch_size=500, device="cpu", seed=0)
    assert not torch.equal(_cat(b.test)[1], _cat(other.test)[1])


def test_synthetic_defaults_and_custom_shape() -> None:
    b = build(DataSpec(name="synthetic"), batch_size=100, device="cpu", seed=0)
    assert (b.num_train, b.num_val, b.num_test) == (461, 51, 128)  # round(51.2) of 512
    assert (b.num_classes, b.in_shape) == (10, (3, 32, 32))
    spec = DataSpec(
        name="synthetic", shape=[5, 7], num_classes=3, num_train=64, num_test=16, val_fraction=0
    )
    c = build(spec, batch_size=10, device="cpu", seed=0)
    assert (c.in_shape, c.num_classes, len(c.train), len(c.test)) == ((5, 7), 3, 7, 2)
    x, y = _cat(c.train)
    assert x.shape == (64, 5, 7) and set(y.tolist()) == {0, 1, 2}
    # A linear teacher makes the labels linearly separable: least squares nearly fits them.
    w = torch.linalg.lstsq(x.flatten(1), torch.eye(3)[y]).solution
    assert ((x.flatten(1) @ w).argmax(1) == y).float().mean() > 0.9


# Files for the datasets read from disk; a new one needs a writer here, or its contract test fails.
WRITERS = {"cifar10": write_cifar10, "cifar100": write_cifar100, "svhn": write_svhn}


@pytest.mark.parametrize("device_resident", [True, False], ids=["device", "fallback"])
@pytest.mark.parametrize("name", DATASETS.names())
def test_every_dataset_honours_the_loader_contract(
    name: str, device_resident: bool, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    root = None
    if DATASETS.get(name).needs_root:
        root = str(tmp_path / "data")
        WRITERS[name](Path(root))
    spec = DataSpec(
        name=name, root=root, num_train=20, num_test=10, device_resident=device_resident
    )
    b = build(spec, batch_size=8, device="cpu", seed=0, test_batch_size=4)
    assert (b.num_train, b.num_val, b.num_test) == (18, 2, 10)
    assert b.val is not None and (len(b.train), len(b.val), len(b.test)) == (3, 1, 3)
    for loader, n in ((b.train, 18), (b.val, 2), (b.test, 10)):
        x, y = _cat(loader)
        assert x.shape == (n, *b.in_shape) and x.dtype == torch.float32
        assert y.shape == (n,) and y.dtype == torch.int64
        assert 0 <= y.min() and y.max() < b.num_classes
        assert torch.isfinite(x).all()
    assert _same(_epoch(b.train, 5), _epoch(b.train, 5))
    if root is None:
        assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("name", ["mnist1d", "digits", "synthetic"])
def test_fallback_equals_device_path_without_augmentation(
    name: str, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    spec = DataSpec(name=name, num_train=40, num_test=20)
    dev = build(spec, batch_size=16, device="cpu", seed=0)
    cpu = build(
        spec.model_copy(update={"device_resident": False}), batch_size=16, device="cpu", seed=0
    )
    assert [x.shape for x, _ in dev.train] == [x.shape for x, _ in cpu.train]
    torch.testing.assert_close(_cat(dev.train), _cat(cpu.train))  # no augmentation to differ


# --- validation split -------------------------------------------------------------------------


def test_stratified_split_is_disjoint_proportional_and_seeded() -> None:
    counts = [50, 30, 15, 4, 1]
    y = torch.cat([torch.full((c,), k) for k, c in enumerate(counts)])
    y = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(0))]
    train, val = split_indices(y, 17, "stratified", seed=3)
    assert len(val) == 17 and len(train) + len(val) == len(y)
    assert not set(train.tolist()) & set(val.tolist())  # no shared example index
    assert sorted(train.tolist() + val.tolist()) == list(range(len(y)))
    for k, c in enumerate(counts):
        share = int((y[val] == k).sum())
        assert abs(share - 17 * c / len(y)) < 1, (k, share)
    again_train, again_val = split_indices(y, 17, "stratified", seed=3)
    assert torch.equal(val, again_val) and torch.equal(train, again_train)
    assert not torch.equal(val, split_indices(y, 17, "stratified", seed=4)[1])
    assert split_indices(y, 0, "stratified", seed=3)[1].tolist() == []
    assert split_indices(y, 5, "last", seed=3)[1].tolist() == [95, 96, 97, 98, 99]


def _rows(x: torch.Tensor) -> set[bytes]:
    return {row.numpy().tobytes() for row in x.flatten(1)}


@pytest.mark.parametrize("name", ["mnist1d", "digits", "synthetic"])
def test_validation_split_is_stratified_and_fixed_by_the_data_seed(
    name: str, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("FLATSWEEP_CACHE_DIR", str(tmp_path))
    spec = DataSpec(name=name, num_train=300, num_test=60, val_fraction=0.2)
    b = build(spec, batch_size=64, device="cpu", seed=0)
    assert (b.num_train, b.num_val, b.num_test) == (240, 60, 60)
    xtr, ytr = _cat(b.train)
    xval, yval = _cat(b.val)
    xte, _ = _cat(b.test)
    # Disjoint from the training and the test examples (every example here is distinct).
    assert not _rows(xval) & _rows(xtr) and not _rows(xval) & _rows(xte)
    pool = torch.cat([ytr, yval])
    for k in range(b.num_classes):
        assert abs(int((yval == k).sum()) - 60 * int((pool == k).sum()) / 300) < 1, k
    # Another training seed reshuffles the training batches, but not the split.
    other = build(spec, batch_size=64, device="cpu", seed=7)
    torch.testing.assert_close(_cat(other.val), (xval, yval), rtol=0, atol=0)
    assert _rows(_cat(other.train)[0]) == _rows(xtr)
    assert not torch.equal(_cat(other.train)[1], ytr)


def test_val_fraction_zero_and_num_val(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FLATSWEEP_CACHE_DIR", str(tmp_path))
    base = DataSpec(name="synthetic", num_train=100, num_test=20)
    none = build(base.model_copy(update={"val_fraction": 0.0}), batch_size=32, device="cpu", seed=0)
    assert none.val is None and (none.num_train, none.num_val) == (100, 0)
    exact = build(
        base.model_copy(update={"num_val": 7, "val_fraction": 0.5}),
        batch_size=32,
        device="cpu",
        seed=0,
    )
    assert (exact.num_train, exact.num_val) == (93, 7)  # num_val overrides val_fraction
    tiny = build(
        base.model_copy(update={"val_fraction": 0.001}), batch_size=32, device="cpu", seed=0
    )
    assert tiny.num_val == 1  # a requested split never rounds away
    with pytest.raises(ValidationError, match="num_val must be less than num_train=100"):
        DataSpec(name="synthetic", num_train=100, num_val=100)
    with pytest.raises(ValueError, match="val_fraction=0.999 must leave training examples"):
        build(
            DataSpec(name="synthetic", num_train=10, val_fraction=0.999),
            batch_size=4,
            device="cpu",
            seed=0,
        )


@pytest.mark.parametrize(
    "options",
    [{}, {"device_resident": False}, {"autoaugment": True}],
    ids=["device", "fallback", "fallback-autoaugment"],
)
def test_cifar_validation_is_the_last_training_images_unaugmented(cifar10, options) -> None:
    root, data = cifar10
    spec = DataSpec(name="cifar10", root=str(root), num_val=5, cutout=8, **options)
    b = build(spec, batch_size=8, device="cpu", seed=0, test_batch_size=3)
    assert (b.num_train, b.num_val, len(b.val)) == (15, 5, 2)
    raw = torch.from_numpy(data["train_x"]).view(-1, 3, 32, 32).float() / 255
    x, y = _cat(b.val)
    # The last 5 training images, in file order, exactly normalised: no crop, flip or Cutout.
    torch.testing.assert_close(x, (raw[15:] - CIFAR10_MEAN) / CIFAR10_STD)
    assert y.tolist() == data["train_y"][15:].tolist()
    assert _cat(b.val)[0].equal(x)  # the same every pass
    assert sorted(_cat(b.train)[1].tolist()) == sorted(data["train_y"][:15].tolist())
    strat = build(
        spec.model_copy(update={"val_split": "stratified"}), batch_size=8, device="cpu", seed=0
    )
    assert not torch.equal(_cat(strat.val)[1], y)  # selectable: another carving


# --- specs ------------------------------------------------------------------------------------


def test_registry_lists_the_datasets() -> None:
    assert DATASETS.names() == ["cifar10", "cifar100", "digits", "mnist1d", "svhn", "synthetic"]


def test_spec_refuses_unknown_keys() -> None:
    with pytest.raises(ValidationError, match="extra"):
        DataSpec(name="digits", batch_size=3)


def test_spec_refuses_unknown_names_with_a_suggestion() -> None:
    with pytest.raises(ValidationError, match="unknown dataset 'cifar-10'.*did you mean 'cifar10'"):
        DataSpec(name="cifar-10", root="/data")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"name": "cifar10", "root": "/d", "shape": [3, 32, 32]},
            "shape is only for dataset 'synthetic'",
        ),
        ({"name": "mnist1d", "num_classes": 5}, "num_classes is only for dataset 'synthetic'"),
        ({"name": "svhn"}, "needs data.root"),
        ({"name": "mnist1d", "cutout": 16}, "cutout applies to image datasets"),
        ({"name": "digits", "autoaugment": True}, "autoaugment applies to image datasets"),
        ({"name": "mnist1d", "pad_mode": "grey"}, "pad_mode applies to image datasets"),
        ({"name": "digits", "crop_padding": 2}, "crop_padding applies to image datasets"),
        ({"name": "cifar10", "root": "/d", "pad_mode": "edge"}, "'zeros', 'grey' or 'reflect'"),
        ({"name": "digits", "val_fraction": 1.0}, "less than 1"),
        ({"name": "digits", "val_split": "random"}, "'stratified' or 'last'"),
        ({"name": "digits", "num_val": -1}, "greater than or equal to 0"),
        ({"name": "synthetic", "shape": [3, 0]}, "positive sizes"),
        ({"name": "cifar10", "root": "/d", "cutout": -1}, "greater than or equal to 0"),
        ({"name": "digits", "num_train": 0}, "greater than or equal to 1"),
    ],
)
def test_spec_refuses_inconsistent_options(kwargs: dict, match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        DataSpec(**kwargs)


@pytest.mark.gpu  # skipped without CUDA by tests/conftest.py
@pytest.mark.parametrize("pad_mode", ["zeros", "grey", "reflect"])
def test_device_batches_match_cpu_batches(cifar10, pad_mode: str) -> None:
    root, _ = cifar10
    spec = DataSpec(name="cifar10", root=str(root), cutout=8, pad_mode=pad_mode)
    on_cpu = build(spec, batch_size=8, device="cpu", seed=0)
    on_gpu = build(spec, batch_size=8, device="cuda", seed=0)
    for (xc, yc), (xg, yg) in zip(_epoch(on_cpu.train, 2), _epoch(on_gpu.train, 2), strict=True):
        assert xg.is_cuda and yg.is_cuda
        torch.testing.assert_close(xg.cpu(), xc)
        assert torch.equal(yg.cpu(), yc)
