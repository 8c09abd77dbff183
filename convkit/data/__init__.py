"""MNIST-format data for training: an IDX reader and the embedded ``mnist-5k`` sample.

IDX is the format MNIST and Fashion-MNIST ship in: a 4-byte magic number (two zero bytes, a type
code, the number of dimensions), one big-endian uint32 per dimension, then the raw data. Files may
be gzip-compressed. Images come back as float32 tensors ``(N, 1, 28, 28)`` normalised with MNIST's
mean and std (0.1307, 0.3081), labels as int64 tensors ``(N,)``.

``load_mnist("mnist-5k")`` reads the 5,000 real MNIST digits bundled with the package (4,000 train,
1,000 test; see ``mnist-5k/README.md``), so training needs no download. ``load_mnist(DIR)`` reads
any directory holding the four standard files (full MNIST, Fashion-MNIST from Debian's
``dataset-fashion-mnist`` under ``/usr/share/datasets/fashion-mnist/``, or a torchvision root,
whose ``MNIST/raw`` folder holds the same files).
"""
from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Tuple, Union

import numpy as np
import torch

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
EMBEDDED = "mnist-5k"
EMBEDDED_DIR = Path(__file__).resolve().parent / EMBEDDED

#: split -> (images, labels) file stems; each may end in ``.gz``
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
#: sub-folders searched after the directory itself: the usual raw/ and torchvision's layout
_SUBDIRS = ("", "raw", os.path.join("MNIST", "raw"), os.path.join("FashionMNIST", "raw"))

# IDX type code -> numpy big-endian dtype
_IDX_DTYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


class DataError(ValueError):
    """A data directory or IDX file is missing, truncated or malformed."""


def _expected_files() -> str:
    return ", ".join(f"{stem}[.gz]" for pair in FILES.values() for stem in pair)


def read_idx(path: Union[str, os.PathLike], ndim: Optional[int] = None) -> np.ndarray:
    """Read one IDX file (plain or gzip) into a numpy array of its native dtype and shape.

    ``ndim`` checks the number of dimensions the header declares (3 for images, 1 for labels).
    Raises :class:`DataError` naming the file for a bad magic number, a wrong dimension count or a
    truncated body.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:  # gzip raises these for corrupt or truncated streams
        raise DataError(f"cannot read IDX file {path}: {e}") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file: bad magic number {raw[:4].hex() or '(empty)'}"
                        f" (expected 0x0000 then a type code in "
                        f"{sorted(hex(c) for c in _IDX_DTYPES)} and the dimension count)")
    dtype, dims = _IDX_DTYPES[raw[2]], raw[3]
    if ndim is not None and dims != ndim:
        raise DataError(f"{path}: IDX header declares {dims} dimensions, expected {ndim} "
                        f"(magic number {raw[:4].hex()})")
    header = 4 + 4 * dims
    if len(raw) < header:
        raise DataError(f"{path} is truncated: {len(raw)} bytes, header alone needs {header}")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(f"{path} is truncated or has trailing bytes: {len(raw)} bytes, the header "
                        f"(shape {shape}, dtype {dtype.name}) needs exactly {expected}")
    body = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return body.astype(dtype.newbyteorder("="))


def find_idx_files(directory: Union[str, os.PathLike]) -> dict:
    """Locate the four standard IDX files under ``directory`` (also its ``raw/`` and torchvision's
    ``MNIST/raw/``). Returns ``{"train": (images, labels), "test": (images, labels)}`` paths.

    Raises :class:`DataError` naming the directory and the expected files when they are not found.
    """
    root = Path(directory).expanduser()
    if not root.is_dir():
        raise DataError(f"data directory {root} does not exist or is not a directory; "
                        f"expected a directory holding {_expected_files()} (or 'mnist-5k' for the "
                        "embedded sample)")
    for sub in _SUBDIRS:
        base = root / sub
        found = {}
        for split, stems in FILES.items():
            paths = [_first_existing(base, stem) for stem in stems]
            if None in paths:
                break
            found[split] = tuple(paths)
        else:
            return found
    present = sorted(p.name for p in root.iterdir())[:20]
    raise DataError(f"data directory {root} does not hold the four MNIST-format IDX files; "
                    f"expected {_expected_files()} (directly, or under raw/ or MNIST/raw/); "
                    f"found: {present or 'nothing'}")


def _first_existing(base: Path, stem: str) -> Optional[Path]:
    for name in (stem, stem + ".gz"):
        if (base / name).is_file():
            return base / name
    return None


def normalize(images: np.ndarray, mean: float = MNIST_MEAN, std: float = MNIST_STD) -> torch.Tensor:
    """uint8 images ``(N, H, W)`` -> float32 tensor ``(N, 1, H, W)``: ``(x / 255 - mean) / std``."""
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).div_(255.0)
    return x.sub_(mean).div_(std).unsqueeze(1)


@dataclass
class Split:
    """One split of a data set: normalised ``images`` (N, 1, H, W) and int64 ``labels`` (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, n: Optional[int]) -> "Split":
        """The first ``n`` examples (all when ``n`` is None)."""
        return self if n is None else Split(self.images[:n], self.labels[:n])

    def batches(self, batch_size: int, shuffle: bool = False,
                generator: Optional[torch.Generator] = None) -> Iterator[Tuple[torch.Tensor,
                                                                              torch.Tensor]]:
        """Yield ``(images, labels)`` mini-batches; the order depends only on ``generator``."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else None
        for start in range(0, n, batch_size):
            if order is None:
                sl = slice(start, start + batch_size)
                yield self.images[sl], self.labels[sl]
            else:
                idx = order[start:start + batch_size]
                yield self.images[idx], self.labels[idx]

    def num_batches(self, batch_size: int) -> int:
        """Number of mini-batches of ``batch_size`` (the last one may be smaller)."""
        return -(-len(self) // batch_size)


@dataclass
class Dataset:
    """``train`` and ``test`` splits plus where they came from."""

    train: Split
    test: Split
    source: str


def _load_split(images_path: Path, labels_path: Path, mean: float, std: float) -> Split:
    images = read_idx(images_path, ndim=3)
    labels = read_idx(labels_path, ndim=1)
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{images_path} holds {images.shape[0]} images but {labels_path} holds "
                        f"{labels.shape[0]} labels")
    return Split(normalize(images, mean, std), torch.from_numpy(labels.astype(np.int64)))


def _load_torchvision(root: Path, mean: float, std: float) -> Optional[Dataset]:
    """torchvision's MNIST from ``root`` (no download), or None when torchvision does not import."""
    try:
        from torchvision import datasets  # optional, never required
    except Exception:  # torchvision missing or broken against this torch build
        return None
    try:
        splits = [datasets.MNIST(str(root), train=t, download=False) for t in (True, False)]
    except RuntimeError:
        return None
    train, test = (Split(normalize(d.data.numpy(), mean, std), d.targets.long()) for d in splits)
    return Dataset(train, test, f"torchvision MNIST at {root}")


def load_mnist(data: Union[str, os.PathLike] = EMBEDDED, mean: float = MNIST_MEAN,
               std: float = MNIST_STD) -> Dataset:
    """Load an MNIST-format data set: ``"mnist-5k"`` (embedded) or a directory of IDX files.

    When a directory lacks the IDX files but torchvision imports and can open it as its MNIST
    root, torchvision's dataset is used. Raises :class:`DataError` otherwise.
    """
    root = EMBEDDED_DIR if str(data) == EMBEDDED else Path(data).expanduser()
    try:
        paths = find_idx_files(root)
    except DataError:
        if root.is_dir():
            ds = _load_torchvision(root, mean, std)
            if ds is not None:
                return ds
        raise
    train = _load_split(*paths["train"], mean, std)
    test = _load_split(*paths["test"], mean, std)
    return Dataset(train, test, EMBEDDED if root == EMBEDDED_DIR else str(root))


__all__ = ["MNIST_MEAN", "MNIST_STD", "EMBEDDED", "EMBEDDED_DIR", "FILES", "DataError", "Dataset",
           "Split", "read_idx", "find_idx_files", "normalize", "load_mnist"]
