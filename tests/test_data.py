"""convkit.data: the IDX reader, the embedded mnist-5k sample and the errors for bad data."""
import gzip
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from convkit.data import (
    EMBEDDED_DIR,
    FILES,
    DataError,
    find_idx_files,
    load_mnist,
    read_idx,
)

FASHION = Path("/usr/share/datasets/fashion-mnist")
STEMS = [stem for pair in FILES.values() for stem in pair]


def raw_idx_bytes(name):
    with gzip.open(EMBEDDED_DIR / f"{name}.gz", "rb") as f:
        return f.read()


@pytest.fixture(scope="module")
def embedded():
    return load_mnist("mnist-5k")


@pytest.fixture
def plain_dir(tmp_path):
    """The embedded files, decompressed, in a fresh directory."""
    for stem in STEMS:
        (tmp_path / stem).write_bytes(raw_idx_bytes(stem))
    return tmp_path


def test_embedded_files_match_their_checksums():
    for line in (EMBEDDED_DIR / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        assert hashlib.sha256((EMBEDDED_DIR / name).read_bytes()).hexdigest() == digest, name
    assert (EMBEDDED_DIR / "README.md").is_file()


def test_embedded_shapes_dtypes_and_class_balance(embedded):
    assert embedded.train.images.shape == (4000, 1, 28, 28)
    assert embedded.test.images.shape == (1000, 1, 28, 28)
    assert embedded.train.images.dtype == torch.float32
    assert embedded.train.labels.dtype == torch.int64
    assert embedded.train.labels.bincount().tolist() == [400] * 10
    assert embedded.test.labels.bincount().tolist() == [100] * 10
    assert embedded.source == "mnist-5k"


def test_normalisation_against_raw_bytes(embedded):
    # reference: the IDX body read by hand (16-byte header for images, 8 for labels)
    pixels = np.frombuffer(raw_idx_bytes("t10k-images-idx3-ubyte"), np.uint8, offset=16)
    labels = np.frombuffer(raw_idx_bytes("t10k-labels-idx1-ubyte"), np.uint8, offset=8)
    expected = (pixels.reshape(1000, 1, 28, 28) / 255.0 - 0.1307) / 0.3081
    torch.testing.assert_close(embedded.test.images, torch.from_numpy(expected).float())
    assert embedded.test.labels.tolist() == labels.tolist()
    assert embedded.test.images.min().item() == pytest.approx(-0.1307 / 0.3081, rel=1e-6)


def test_plain_files_read_like_gzip(plain_dir, embedded):
    ds = load_mnist(plain_dir)
    assert torch.equal(ds.train.images, embedded.train.images)
    assert torch.equal(ds.test.labels, embedded.test.labels)


def test_torchvision_layout_is_found_without_torchvision(plain_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("tvroot")
    shutil.copytree(plain_dir, root / "MNIST" / "raw")
    paths = find_idx_files(root)
    assert paths["train"][0] == root / "MNIST" / "raw" / "train-images-idx3-ubyte"
    assert len(load_mnist(root).test) == 1000


def test_missing_directory_names_path_and_expected_files(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DataError, match="does not exist") as e:
        load_mnist(missing)
    assert str(missing) in str(e.value)
    assert "train-images-idx3-ubyte" in str(e.value)


def test_directory_without_idx_files_lists_what_it_expects(plain_dir):
    (plain_dir / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError) as e:
        load_mnist(plain_dir)
    msg = str(e.value)
    assert str(plain_dir) in msg
    assert all(stem in msg for stem in STEMS)


def test_truncated_body(plain_dir):
    path = plain_dir / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="truncated") as e:
        load_mnist(plain_dir)
    assert str(path) in str(e.value)


def test_truncated_header(tmp_path):
    path = tmp_path / "x-idx3-ubyte"
    path.write_bytes(bytes([0, 0, 8, 3, 0, 0]))
    with pytest.raises(DataError, match="truncated"):
        read_idx(path)


def test_truncated_gzip_stream(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes((EMBEDDED_DIR / path.name).read_bytes()[:5000])
    with pytest.raises(DataError, match="cannot read") as e:
        read_idx(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("magic", [b"\x12\x34\x08\x03", b"\x00\x00\x07\x03", b"PK\x03\x04"])
def test_bad_magic_number(plain_dir, magic):
    path = plain_dir / "t10k-images-idx3-ubyte"
    path.write_bytes(magic + path.read_bytes()[4:])
    with pytest.raises(DataError, match="bad magic number") as e:
        load_mnist(plain_dir)
    assert str(path) in str(e.value)


def test_labels_file_in_images_place(plain_dir):
    shutil.copy(plain_dir / "t10k-labels-idx1-ubyte", plain_dir / "t10k-images-idx3-ubyte")
    with pytest.raises(DataError, match="declares 1 dimensions, expected 3"):
        load_mnist(plain_dir)


def test_image_label_count_mismatch(plain_dir):
    raw = raw_idx_bytes("t10k-labels-idx1-ubyte")
    (plain_dir / "t10k-labels-idx1-ubyte").write_bytes(
        raw[:4] + (999).to_bytes(4, "big") + raw[8:-1])
    with pytest.raises(DataError, match="1000 images but .* 999 labels"):
        load_mnist(plain_dir)


def test_data_error_is_a_value_error():
    assert issubclass(DataError, ValueError)


def test_batches_cover_every_example_once_in_a_seeded_order(embedded):
    split = embedded.test.subset(130)
    orders = []
    for _ in range(2):
        gen = torch.Generator().manual_seed(3)
        batches = list(split.batches(64, shuffle=True, generator=gen))
        assert [len(y) for _, y in batches] == [64, 64, 2]
        orders.append(torch.cat([y for _, y in batches]))
    assert torch.equal(orders[0], orders[1])
    assert sorted(orders[0].tolist()) == sorted(split.labels.tolist())
    assert not torch.equal(orders[0], split.labels)  # shuffled
    assert split.num_batches(64) == 3


@pytest.mark.skipif(not FASHION.is_dir(), reason="Debian's dataset-fashion-mnist not installed")
def test_fashion_mnist_directory():
    ds = load_mnist(FASHION)
    assert (len(ds.train), len(ds.test)) == (60000, 10000)
    assert ds.test.labels.bincount().tolist() == [1000] * 10


def fake_torchvision(monkeypatch, found):
    """Install a stand-in ``torchvision.datasets.MNIST`` (torchvision itself is optional)."""
    import sys
    import types

    class MNIST:
        def __init__(self, root, train, download):
            assert download is False
            if not found:
                raise RuntimeError("Dataset not found.")
            n = 6 if train else 4
            self.data = torch.arange(n * 784, dtype=torch.int64).remainder(256).to(
                torch.uint8).reshape(n, 28, 28)
            self.targets = torch.arange(n)

    datasets = types.ModuleType("torchvision.datasets")
    datasets.MNIST = MNIST
    tv = types.ModuleType("torchvision")
    tv.datasets = datasets
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", datasets)


def test_torchvision_dataset_used_when_it_imports(tmp_path, monkeypatch):
    fake_torchvision(monkeypatch, found=True)
    ds = load_mnist(tmp_path)
    assert (len(ds.train), len(ds.test)) == (6, 4)
    assert ds.source.startswith("torchvision MNIST")
    expected = (torch.arange(784).remainder(256).float() / 255 - 0.1307) / 0.3081
    torch.testing.assert_close(ds.train.images[0].flatten(), expected)


def test_torchvision_without_the_dataset_gives_the_idx_error(tmp_path, monkeypatch):
    fake_torchvision(monkeypatch, found=False)
    with pytest.raises(DataError, match="does not hold the four MNIST-format IDX files"):
        load_mnist(tmp_path)
