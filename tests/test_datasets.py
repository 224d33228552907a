"""Named datasets, user files, the search order and the verified download. Never the network."""

import dataclasses
import hashlib
import http.client
import io
import os
import urllib.request
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest

from xpnet.data import datasets
from xpnet.data.datasets import (
    FASHION_MNIST_CLASSES,
    IDX_FILES,
    Dataset,
    DownloadError,
    download_file,
    load_dataset,
    search_paths,
)
from xpnet.data.idx import write_idx
from xpnet.errors import ConfigError, DataError

REAL_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No real cache, no system folder, no $XPNET_DATA, and a network that is never reached."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("XPNET_DATA", raising=False)
    monkeypatch.setattr(datasets, "SYSTEM_DATA_DIR", tmp_path / "system")

    def no_network(url, timeout=None):
        raise URLError("network disabled in tests")

    monkeypatch.setattr(datasets, "urlopen", no_network)


def _fake_dataset(folder, n_train=6, n_test=4, compress=True, labels=None, image_shape=(28, 28)):
    """Write four small MNIST-style files; returns {file name: bytes}."""
    rng = np.random.default_rng(0)
    arrays = [
        rng.integers(0, 256, (n_train, *image_shape), dtype=np.uint8),
        np.arange(n_train, dtype=np.uint8) % 10 if labels is None else labels,
        rng.integers(0, 256, (n_test, *image_shape), dtype=np.uint8),
        np.arange(n_test, dtype=np.uint8) % 10,
    ]
    written = {}
    for stem, array in zip(IDX_FILES, arrays, strict=True):
        path = Path(folder) / (stem + (".gz" if compress else ""))
        write_idx(path, array, compress=compress)
        written[path.name] = path.read_bytes()
    return written


def test_dataset_properties():
    ds = Dataset("d", np.ones((4, 3)), np.zeros(4, np.int32), np.ones((2, 3)), np.zeros(2, np.int32), ["a", "b"])
    assert ds.num_classes == 2 and ds.num_features == 3
    reg = Dataset("r", np.ones((4, 3)), np.ones((4, 2)), np.ones((1, 3)), np.ones((1, 2)), [], "regression")
    assert reg.num_classes == 2
    assert len(FASHION_MNIST_CLASSES) == 10 and FASHION_MNIST_CLASSES[9] == "Ankle boot"


def test_search_order(tmp_path, monkeypatch):
    monkeypatch.setenv("XPNET_DATA", str(tmp_path / "env"))
    assert search_paths("mnist", tmp_path / "dd") == [
        tmp_path / "dd",
        tmp_path / "dd" / "mnist",
        tmp_path / "env",
        tmp_path / "env" / "mnist",
        tmp_path / "cache" / "xpnet" / "mnist",
        tmp_path / "system" / "mnist",
    ]
    monkeypatch.delenv("XPNET_DATA")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert search_paths("mnist") == [Path.home() / ".cache" / "xpnet" / "mnist", tmp_path / "system" / "mnist"]


@pytest.mark.parametrize("compress", [True, False])
def test_load_named_from_data_dir(tmp_path, compress):
    _fake_dataset(tmp_path / "d", compress=compress)
    ds = load_dataset("fashion-mnist", data_dir=tmp_path / "d", download=False)
    assert ds.X_train.shape == (6, 784) and ds.X_train.dtype == np.uint8
    assert ds.y_train.dtype == np.int32 and ds.y_test.tolist() == [0, 1, 2, 3]
    assert ds.class_names == FASHION_MNIST_CLASSES and ds.num_classes == 10 and ds.task == "classification"


def test_data_dir_wins_over_env_and_subfolders_count(tmp_path, monkeypatch):
    _fake_dataset(tmp_path / "env" / "mnist", n_train=3)
    monkeypatch.setenv("XPNET_DATA", str(tmp_path / "env"))
    assert len(load_dataset("MNIST", download=False).X_train) == 3
    _fake_dataset(tmp_path / "dd", n_train=5)
    assert len(load_dataset("mnist", data_dir=tmp_path / "dd", download=False).X_train) == 5


def test_incomplete_folder_is_skipped(tmp_path, monkeypatch):
    _fake_dataset(tmp_path / "dd", n_train=5)
    os.remove(tmp_path / "dd" / "t10k-labels-idx1-ubyte.gz")
    _fake_dataset(tmp_path / "cache" / "xpnet" / "mnist", n_train=2)
    assert len(load_dataset("mnist", data_dir=tmp_path / "dd", download=False).X_train) == 2


def test_count_mismatch_names_both_files(tmp_path):
    _fake_dataset(tmp_path, labels=np.zeros(5, np.uint8))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz has 6 images but .*train-labels.* 5 labels"):
        load_dataset("mnist", data_dir=tmp_path, download=False)


def test_label_out_of_range(tmp_path):
    _fake_dataset(tmp_path, labels=np.array([0, 1, 2, 12, 3, 4], np.uint8))
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte.gz: label 12 at index 3 is outside \[0, 10\)"):
        load_dataset("fashion-mnist", data_dir=tmp_path, download=False)


def test_wrong_image_size(tmp_path):
    _fake_dataset(tmp_path, image_shape=(32, 32))
    with pytest.raises(DataError, match=r"train-images.*\(n, 28, 28\)"):
        load_dataset("fashion-mnist", data_dir=tmp_path, download=False)


def test_not_found_without_download(tmp_path):
    with pytest.raises(DataError) as info:
        load_dataset("fashion-mnist", data_dir=tmp_path / "dd", download=False)
    message = str(info.value)
    assert "switched off" in message and "apt-get install dataset-fashion-mnist" in message
    for folder in search_paths("fashion-mnist", tmp_path / "dd"):
        assert str(folder) in message


def test_offline_lists_places_and_remedies(tmp_path):
    with pytest.raises(DataError) as info:
        load_dataset("mnist", data_dir=tmp_path / "dd")
    message = str(info.value)
    assert "network disabled in tests" in message and "--data-dir" in message
    assert "apt-get" not in message  # there is no Debian package for MNIST
    assert str(tmp_path / "dd" / "mnist") in message and str(tmp_path / "system" / "mnist") in message
    assert not list((tmp_path / "cache").rglob("*-ubyte*"))


def _serve_from(monkeypatch, tmp_path, name, files, corrupt=None):
    """Point ``name``'s source at a file:// folder holding ``files``, with matching SHA-256s."""
    served = tmp_path / "server"
    served.mkdir(exist_ok=True)
    checksums = {}
    for file_name, data in files.items():
        (served / file_name).write_bytes(data)
        checksums[file_name] = ("sha256", hashlib.sha256(data).hexdigest())
    if corrupt:
        checksums[corrupt] = ("sha256", "0" * 64)
    source = dataclasses.replace(datasets.SOURCES[name], base_url=served.as_uri(), checksums=checksums)
    monkeypatch.setitem(datasets.SOURCES, name, source)

    def local_only(url, timeout=None):
        assert url.startswith("file://"), url
        return urllib.request.urlopen(url, timeout=timeout)

    monkeypatch.setattr(datasets, "urlopen", local_only)


def test_download_into_cache_then_load(tmp_path, monkeypatch):
    files = _fake_dataset(tmp_path / "made")
    _serve_from(monkeypatch, tmp_path, "fashion-mnist", files)
    ds = load_dataset("fashion-mnist", progress=True)
    assert ds.X_train.shape == (6, 784)
    cache = tmp_path / "cache" / "xpnet" / "fashion-mnist"
    assert sorted(p.name for p in cache.iterdir()) == sorted(files)
    monkeypatch.setattr(datasets, "urlopen", None)  # second load must not download
    assert load_dataset("fashion-mnist").y_test.tolist() == ds.y_test.tolist()


def test_hash_mismatch_leaves_nothing(tmp_path, monkeypatch):
    files = _fake_dataset(tmp_path / "made")
    _serve_from(monkeypatch, tmp_path, "mnist", files, corrupt="t10k-images-idx3-ubyte.gz")
    with pytest.raises(DataError, match=r"sha256 is [0-9a-f]{64}, expected 0{64}"):
        load_dataset("mnist", progress=False)
    cache = tmp_path / "cache" / "xpnet" / "mnist"
    assert "t10k-images-idx3-ubyte.gz" not in {p.name for p in cache.iterdir()}
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]


class _Response(io.BytesIO):
    """A response that breaks after ``limit`` bytes, as a dropped connection does."""

    def __init__(self, data, limit):
        super().__init__(data)
        self.limit = limit
        self.headers = {"Content-Length": str(len(data))}

    def read(self, size=-1):
        if self.tell() >= self.limit:
            raise http.client.IncompleteRead(b"", len(self.getvalue()) - self.tell())
        return super().read(min(size, self.limit - self.tell()))


@pytest.mark.parametrize("progress", [True, False])
def test_partial_download_never_lands(tmp_path, progress):
    data = bytes(range(256)) * 1000
    dest = tmp_path / "out" / "file.gz"
    checksum = ("sha256", hashlib.sha256(data).hexdigest())
    with pytest.raises(DownloadError, match=r"cannot download http://example/file\.gz"):
        download_file(
            "http://example/file.gz",
            dest,
            checksum,
            opener=lambda url, timeout: _Response(data, 100_000),
            progress=progress,
        )
    assert list((tmp_path / "out").iterdir()) == []
    download_file("http://example/file.gz", dest, checksum, opener=lambda url, timeout: _Response(data, 10**9))
    assert dest.read_bytes() == data


def test_download_md5_check(tmp_path):
    data = b"hello"
    download_file("x", tmp_path / "h", ("md5", hashlib.md5(data).hexdigest()), lambda u, timeout: io.BytesIO(data))
    assert (tmp_path / "h").read_bytes() == data


def test_npz_with_train_and_test(tmp_path):
    path = tmp_path / "mine.npz"
    np.savez(path, X_train=np.ones((4, 2)), y_train=[0, 1, 0, 2], X_test=np.zeros((2, 2)), y_test=[1, 1])
    ds = load_dataset(path)
    assert ds.name == "mine" and ds.X_test.shape == (2, 2) and ds.class_names == ["0", "1", "2"]


def test_npz_with_x_y_holds_out_a_seeded_fifth(tmp_path):
    path = tmp_path / "mine.npz"
    np.savez(path, X=np.arange(20.0).reshape(10, 2), y=np.arange(10.0))
    ds = load_dataset(path, task="regression")
    assert len(ds.X_train) == 8 and len(ds.X_test) == 2 and ds.task == "regression"
    assert sorted(np.concatenate([ds.y_train, ds.y_test]).tolist()) == list(range(10))
    assert load_dataset(path, task="regression").y_test.tolist() == ds.y_test.tolist()
    np.testing.assert_array_equal(ds.X_test[:, 0], ds.y_test * 2)


def test_npz_train_test_mismatch_and_missing_keys(tmp_path):
    path = tmp_path / "m.npz"
    np.savez(path, X_train=np.ones((4, 2)), y_train=[0, 1, 0, 1], X_test=np.ones((2, 3)), y_test=[0, 1])
    with pytest.raises(DataError, match="same columns"):
        load_dataset(path)
    np.savez(path, X_train=np.ones((4, 2)))
    with pytest.raises(DataError, match=r"X_train, y_train, X_test, y_test or X, y \(found: X_train\)"):
        load_dataset(path)


def test_csv_dataset(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,b,c\n" + "".join(f"{i},{i * 2},{i % 3}\n" for i in range(10)))
    ds = load_dataset(path)
    assert ds.X_train.dtype == np.float32 and len(ds.X_test) == 2 and ds.num_classes == 3


def test_unknown_name_and_bad_task(tmp_path):
    with pytest.raises(DataError, match="not a known name"):
        load_dataset("cifar-10")
    with pytest.raises(ConfigError, match="task"):
        load_dataset("mnist", task="both")


@pytest.mark.skipif(
    not REAL_FASHION.is_dir(), reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)"
)
def test_real_fashion_mnist(monkeypatch):
    monkeypatch.setattr(datasets, "SYSTEM_DATA_DIR", REAL_FASHION.parent)
    ds = load_dataset("fashion-mnist", download=False)
    assert ds.X_train.shape == (60000, 784) and ds.X_test.shape == (10000, 784)
    assert np.bincount(ds.y_train).tolist() == [6000] * 10
    for file_name, (algorithm, digest) in datasets.SOURCES["fashion-mnist"].checksums.items():
        assert hashlib.new(algorithm, (REAL_FASHION / file_name).read_bytes()).hexdigest() == digest
