"""Loaders that yield ``(x, y)`` batches already on the device, reproducible per epoch.

``DeviceLoader`` is the default, after KellerJordan/cifar10-airbench's ``CifarLoader``: the whole
dataset lives on the device (uint8 images, a quarter of float32's bytes) and the crop (zero,
grey or reflect border), flip, normalisation and Cutout are batched tensor ops there, so trials
sharing a GPU do not queue on CPU workers. ``SampleLoader`` is the fallback for what needs
per-image PIL ops (AutoAugment) or when ``device_resident=False``: torchvision transforms per
sample in a torch ``DataLoader``, batches moved to the device.

Reproducibility: every random draw of an epoch (the order, crops, flips, Cutout squares,
per-sample transform seeds) comes from a CPU ``torch.Generator`` seeded from ``(seed, epoch)``
alone, so epoch e's batches are identical whether or not the run was resumed before it, and on
CPU and GPU alike. ``set_epoch(e)`` selects the epoch; without it a pass advances to the next
epoch, as airbench's loader does, so a forgotten call never repeats one shuffle forever. Both
loaders draw the order first, so for the same seed they visit examples in the same order.

Cutout (DeVries & Taylor 2017) zeroes a square after normalisation, as in their code, so the
square holds the mean pixel; its centre is uniform over the image and it is clipped at the
border. Deviation: the square's side is exactly ``cutout`` px, where the official code uses
``2 * (cutout // 2)`` (the same for the even sizes used in practice).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Literal, Protocol

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

Batch = tuple[Tensor, Tensor]


class Loader(Protocol):
    """What a training loop needs: batches on the device, a length, and the epoch to replay."""

    def __iter__(self) -> Iterator[Batch]: ...

    def __len__(self) -> int: ...

    def set_epoch(self, epoch: int) -> None: ...


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator that depends on ``(seed, epoch)`` only; SeedSequence decorrelates them."""
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, but got {epoch=}")
    state = np.random.SeedSequence([seed % 2**64, epoch]).generate_state(1, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0]))


class _EpochCounter:
    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, but got {batch_size=}")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next pass replays; its batches depend on ``(seed, epoch)`` only."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, but got {epoch=}")
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)  # drop_last=False

    def _next_epoch(self) -> int:
        epoch, self.epoch = self.epoch, self.epoch + 1
        return epoch


PadMode = Literal["zeros", "grey", "reflect"]
#: Pixel value of the grey border (AMP official: ``RandomCrop(32, padding=4, fill=128)``).
GREY = 128


def _source(pos: Tensor, size: int, pad_mode: PadMode) -> tuple[Tensor, Tensor | None]:
    """Where padded position ``pos`` (in unpadded coordinates) reads from, and whether it is
    inside the image (None when every position reads a real pixel, as with reflect)."""
    if pad_mode == "reflect":
        # numpy/torch "reflect": the edge pixel is not repeated, -1 -> 1 and size -> size - 2.
        pos = pos.abs()
        return torch.where(pos >= size, 2 * (size - 1) - pos, pos), None
    inside = (pos >= 0) & (pos < size)
    return pos.clamp(0, size - 1), inside


def crop_flip(
    x: Tensor, dy: Tensor, dx: Tensor, flip: Tensor, padding: int, pad_mode: PadMode = "zeros"
) -> Tensor:
    """Per-image random crop of the padded batch, then optional mirror, in one gather.

    ``x`` is (B, C, H, W); ``dy``/``dx`` are offsets in [0, 2 * padding] into the padded
    image and ``flip`` is a bool per image. The border is ``pad_mode``: zeros (black before
    normalisation), grey (pixel value 128 for uint8 images, 128/255 for float ones) or reflect
    (needs ``padding < min(H, W)``). Matches torchvision's ``RandomCrop(H, padding, fill,
    padding_mode)`` followed by RandomHorizontalFlip for the same draws. The padded image is
    never built: each output pixel reads its source pixel, or the fill outside the image.
    """
    b, c, h, w = x.shape
    if pad_mode == "reflect" and padding >= min(h, w):
        raise ValueError(
            f"crop_padding must be less than the image side {min(h, w)} with pad_mode"
            f" 'reflect', but got {padding}"
        )
    ar_h = torch.arange(h, device=x.device)
    ar_w = torch.arange(w, device=x.device)
    rows, in_r = _source(dy[:, None] + ar_h - padding, h, pad_mode)  # (B, H)
    # A flipped crop reads its columns right to left: out[j] = crop[W - 1 - j].
    cols, in_c = _source(
        dx[:, None] + torch.where(flip[:, None], ar_w.flip(0), ar_w) - padding, w, pad_mode
    )  # (B, W)
    bi = torch.arange(b, device=x.device)[:, None, None, None]
    ci = torch.arange(c, device=x.device)[None, :, None, None]
    out = x[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]
    if in_r is None or in_c is None:
        return out
    fill = 0 if pad_mode == "zeros" else (GREY if x.dtype == torch.uint8 else GREY / 255)
    outside = ~(in_r[:, None, :, None] & in_c[:, None, None, :])
    return out.masked_fill(outside, fill)


def cutout(x: Tensor, cy: Tensor, cx: Tensor, size: int) -> Tensor:
    """Zero a ``size``-px square centred at (cy, cx) per image, clipped at the border."""
    h, w = x.shape[-2:]
    top, left = cy - size // 2, cx - size // 2
    r = torch.arange(h, device=x.device)
    c = torch.arange(w, device=x.device)
    in_r = (r >= top[:, None]) & (r < top[:, None] + size)  # (B, H)
    in_c = (c >= left[:, None]) & (c < left[:, None] + size)  # (B, W)
    return x.masked_fill((in_r[:, :, None] & in_c[:, None, :])[:, None], 0.0)


class DeviceLoader(_EpochCounter):
    """Batches from tensors held on ``device``; augmentation and normalisation done there.

    ``x`` is uint8 NCHW images (normalised here with ``mean``/``std`` in [0, 1] pixel units)
    or float32 already standardised (``mean``/``std`` None). ``y`` is int64.
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        *,
        batch_size: int,
        device: torch.device | str,
        seed: int,
        shuffle: bool,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        crop_padding: int = 0,
        pad_mode: PadMode = "zeros",
        flip: bool = False,
        cutout: int = 0,
    ) -> None:
        super().__init__(len(x), batch_size, seed)
        self.device = torch.device(device)
        self.x = x.to(self.device)
        self.y = y.to(self.device)
        self.shuffle = shuffle
        self.crop_padding, self.flip, self.cutout_size = crop_padding, flip, cutout
        self.pad_mode = pad_mode
        self.mean = self.std = None
        if mean is not None and std is not None:
            self.mean = torch.tensor(mean, device=self.device).view(1, -1, 1, 1)
            self.std = torch.tensor(std, device=self.device).view(1, -1, 1, 1)

    def __iter__(self) -> Iterator[Batch]:
        n, g = self.n, epoch_generator(self.seed, self._next_epoch())
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        # The whole epoch's draws in a few CPU calls, indexed by position in the epoch, then
        # one transfer: no per-batch host sync, and the same values on any device.
        draws: dict[str, Tensor] = {}
        if self.crop_padding > 0:
            draws["dy"] = torch.randint(0, 2 * self.crop_padding + 1, (n,), generator=g)
            draws["dx"] = torch.randint(0, 2 * self.crop_padding + 1, (n,), generator=g)
        if self.flip:
            draws["flip"] = torch.rand(n, generator=g) < 0.5
        if self.cutout_size > 0:
            h, w = self.x.shape[-2:]
            draws["cy"] = torch.randint(0, h, (n,), generator=g)
            draws["cx"] = torch.randint(0, w, (n,), generator=g)
        order = order.to(self.device)
        draws = {k: v.to(self.device) for k, v in draws.items()}
        for start in range(0, n, self.batch_size):
            sl = slice(start, start + self.batch_size)
            idx = order[sl]
            x = self.x[idx]
            if self.crop_padding > 0 or self.flip:
                b = len(idx)
                zeros = torch.zeros(b, dtype=torch.long, device=self.device)
                flip = draws["flip"][sl] if self.flip else torch.zeros_like(zeros, dtype=torch.bool)
                dy = draws["dy"][sl] if self.crop_padding > 0 else zeros
                dx = draws["dx"][sl] if self.crop_padding > 0 else zeros
                x = crop_flip(x, dy, dx, flip, self.crop_padding, self.pad_mode)
            if self.mean is not None:
                x = (x.float() / 255.0 - self.mean) / self.std  # same ops as ToTensor+Normalize
            else:
                x = x.float()
            if self.cutout_size > 0:
                x = cutout(x, draws["cy"][sl], draws["cx"][sl], self.cutout_size)
            yield x, self.y[idx]


class Cutout:
    """torchvision-style transform on a normalised CHW tensor; draws from the global RNG,
    which ``SampleLoader`` seeds per sample."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        cy, cx = torch.randint(0, h, (1,)), torch.randint(0, w, (1,))
        return cutout(x[None], cy, cx, self.size)[0]


class _SeededSamples(Dataset):
    """Examples with a per-sample transform whose randomness is seeded by (epoch, index).

    torchvision's v1 transforms draw from torch's global RNG. Forking it around each call and
    seeding it from the epoch's seed and the example's index makes the result independent of
    batch composition, worker count and whatever else used the global RNG.
    """

    def __init__(self, x: Tensor, y: Tensor, transform: Callable[[object], Tensor] | None) -> None:
        self.x, self.y, self.transform = x, y, transform
        self.epoch_seed = 0

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> Batch:
        if self.transform is None:
            return self.x[i].float(), self.y[i]
        from PIL import Image

        img = Image.fromarray(self.x[i].permute(1, 2, 0).numpy())  # uint8 CHW -> HWC
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.epoch_seed + i) % 2**63)
            return self.transform(img), self.y[i]


class SampleLoader(_EpochCounter):
    """Fallback: per-sample ``transform`` in a torch ``DataLoader``; batches moved to ``device``.

    ``x`` is uint8 NCHW images when ``transform`` is given (it receives a PIL image), otherwise
    float32 served as is.
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        *,
        batch_size: int,
        device: torch.device | str,
        seed: int,
        shuffle: bool,
        transform: Callable[[object], Tensor] | None = None,
        num_workers: int = 0,
    ) -> None:
        super().__init__(len(x), batch_size, seed)
        self.device = torch.device(device)
        self.shuffle = shuffle
        self.num_workers = num_workers
        self.dataset = _SeededSamples(x, y, transform)

    def __iter__(self) -> Iterator[Batch]:
        g = epoch_generator(self.seed, self._next_epoch())
        order = torch.randperm(self.n, generator=g) if self.shuffle else torch.arange(self.n)
        self.dataset.epoch_seed = int(torch.randint(0, 2**62, (1,), generator=g))
        loader = DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=order.tolist(),  # our order, not DataLoader's own generator
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        for x, y in loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
