"""Named datasets (Fashion-MNIST, MNIST) and user files (.npz, .csv) as one ``Dataset``.

Named datasets are looked for in ``search_paths(name)``; when absent they are
downloaded into the cache folder, hashed while streaming, and renamed into place
only after the hash matches, so a partial or tampered download never looks like data.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.error import URLError
from urllib.request import urlopen

import numpy as np

from xpnet.data.dataset import Dataset, held_out_rows
from xpnet.data.idx import read_idx
from xpnet.data.regression import REGRESSION_DATASETS, load_regression
from xpnet.data.tabular import check_task, check_xy, load_csv, read_npz_arrays
from xpnet.errors import ConfigError, DataError
from xpnet.fileio import expand_user, file_kind, home_folder, open_input
from xpnet.names import find
from xpnet.weights import check_sample_weight

FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
MNIST_CLASSES = [str(digit) for digit in range(10)]

#: The four files of an MNIST-style dataset, in the order (train X, train y, test X, test y).
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

IMAGE_SHAPE = (28, 28)

#: Where Debian's dataset packages (e.g. ``dataset-fashion-mnist``) install.
SYSTEM_DATA_DIR = Path("/usr/share/datasets")

#: User labels must be below this; a larger label is almost surely not a class index.
MAX_CLASSES = 100_000

DOWNLOAD_TIMEOUT = 30.0
#: A download longer than this is cut off: no MNIST-style file comes near it.
MAX_DOWNLOAD_BYTES = 2**28
_CHUNK = 1 << 16


@dataclass(frozen=True)
class Source:
    """Where a named dataset comes from and how to check it.

    ``checksums`` maps each ``.gz`` file name to ``(hashlib algorithm, hex digest)``.
    """

    class_names: list[str]
    base_url: str
    checksums: dict[str, tuple[str, str]]
    apt_package: str | None = None


SOURCES: dict[str, Source] = {
    "fashion-mnist": Source(
        class_names=FASHION_MNIST_CLASSES,
        base_url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        # SHA-256 of the files shipped by Debian's dataset-fashion-mnist (the upstream files).
        checksums={
            "train-images-idx3-ubyte.gz": (
                "sha256",
                "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
            ),
            "train-labels-idx1-ubyte.gz": (
                "sha256",
                "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
            ),
            "t10k-images-idx3-ubyte.gz": (
                "sha256",
                "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
            ),
            "t10k-labels-idx1-ubyte.gz": (
                "sha256",
                "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
            ),
        },
        apt_package="dataset-fashion-mnist",
    ),
    "mnist": Source(
        class_names=MNIST_CLASSES,
        base_url="https://ossci-datasets.s3.amazonaws.com/mnist/",
        # The widely published MD5s (as used by torchvision); no SHA-256 we could confirm.
        checksums={
            "train-images-idx3-ubyte.gz": ("md5", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
            "train-labels-idx1-ubyte.gz": ("md5", "d53e105ee54ea40749a09fcbcd1e9432"),
            "t10k-images-idx3-ubyte.gz": ("md5", "9fb629c4189551a2d022fa330f9573f3"),
            "t10k-labels-idx1-ubyte.gz": ("md5", "ec29112dd5afa0611ce80d1b7f02629c"),
        },
    ),
}


class DownloadError(DataError):
    """The network could not deliver a file (as opposed to delivering a wrong one)."""


def cache_dir(name: str) -> Path:
    """``$XDG_CACHE_HOME/xpnet/<name>``, defaulting to ``~/.cache/xpnet/<name>``.

    Raises ``ConfigError`` where there is no such folder to name: ``XDG_CACHE_HOME``
    holds an unknown ``~user``, or it is unset and the user has no home folder.
    """
    folder = _cache_root()
    if folder is None:
        raise ConfigError(
            "there is no home folder to keep downloaded datasets in (HOME is unset and the user has no "
            "password entry); set XDG_CACHE_HOME or XPNET_DATA to a folder, or pass --data-dir"
        )
    return folder / "xpnet" / name


def _cache_root() -> Path | None:
    """The cache folder's root, or None when the user has no home folder."""
    configured = os.environ.get("XDG_CACHE_HOME")
    if configured:
        return expand_user(configured, "XDG_CACHE_HOME")
    home = home_folder()
    return home / ".cache" if home is not None else None


def search_paths(name: str, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Folders searched for a named dataset, first match wins.

    ``data_dir``, then ``$XPNET_DATA`` (each holding the files directly or in a
    subfolder ``<name>``), then the cache folder, then ``/usr/share/datasets/<name>``
    (where Debian's ``dataset-fashion-mnist`` package installs).
    """
    paths: list[Path] = []
    for root, where in ((data_dir, "--data-dir"), (os.environ.get("XPNET_DATA") or None, "XPNET_DATA")):
        if root is not None:
            root = expand_user(root, where)
            paths += [root, root / name]
    if _cache_root() is not None:  # no home folder: no cache to search
        paths.append(cache_dir(name))
    paths.append(SYSTEM_DATA_DIR / name)
    unique: list[Path] = []
    for path in paths:
        if path not in unique:
            unique.append(path)
    return unique


def find_idx_files(folder: Path) -> list[Path] | None:
    """The four IDX files in ``folder`` (each gzip or raw), or None if any is missing."""
    found = []
    for stem in IDX_FILES:
        candidates = [folder / f"{stem}.gz", folder / stem]
        match = next((path for path in candidates if _is_file(path)), None)
        if match is None:
            return None
        found.append(match)
    return found


def _is_file(path: Path) -> bool:
    """True for a regular file, False where there is none; a FIFO or device of that name is refused."""
    try:
        mode = os.stat(path).st_mode
    except OSError:  # missing, or in a folder xpnet may not read
        return False
    if not stat.S_ISREG(mode):
        raise DataError(f"{path}: is a {file_kind(mode)}, not an IDX file; put the dataset's files there")
    return True


def download_file(
    url: str,
    dest: str | os.PathLike,
    checksum: tuple[str, str],
    opener=None,
    timeout: float = DOWNLOAD_TIMEOUT,
    progress: bool = True,
) -> Path:
    """Stream ``url`` to ``dest``, verifying ``checksum = (algorithm, hexdigest)``.

    The bytes go to a temporary file beside ``dest``, renamed only when the hash
    matches; on any failure the temporary file is removed. ``opener`` defaults to
    ``urllib.request.urlopen`` (tests pass their own). Network failures raise
    ``DownloadError``; a hash mismatch raises ``DataError``.
    """
    dest = Path(dest)
    algorithm, expected = checksum
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, temp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    except OSError as exc:
        raise DataError(
            f"cannot write into {dest.parent}: {exc.strerror or exc}; set XDG_CACHE_HOME to a writable folder"
        ) from exc
    try:
        with os.fdopen(fd, "wb") as out, (opener or urlopen)(url, timeout=timeout) as response:
            got = _stream_hashed(url, response, out, hashlib.new(algorithm), dest.name if progress else None)
            out.flush()
            os.fsync(out.fileno())
        if got != expected:
            raise DataError(
                f"{url}: the downloaded file's {algorithm} is {got}, expected {expected}; the download "
                "was corrupted or the file on the server changed; try again, or get the files another way"
            )
        os.replace(temp_name, dest)
    except (URLError, TimeoutError, http.client.HTTPException, OSError) as exc:
        with contextlib.suppress(OSError):
            os.unlink(temp_name)
        reason = getattr(exc, "reason", None) or exc
        raise DownloadError(f"cannot download {url}: {reason}") from exc
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp_name)
        raise
    return dest


def _stream_hashed(url: str, response, out, hasher, bar_name: str | None) -> str:
    """Copy ``response`` to ``out`` chunk by chunk, hashing as it goes; the hex digest.
    A server sending more than ``MAX_DOWNLOAD_BYTES`` is cut off."""
    bar = _progress_bar(response, bar_name) if bar_name else None
    received = 0
    try:
        while chunk := response.read(_CHUNK):
            received += len(chunk)
            if received > MAX_DOWNLOAD_BYTES:
                raise DataError(
                    f"{url}: more than {MAX_DOWNLOAD_BYTES} bytes, far larger than the real file; "
                    "the server is not sending the dataset"
                )
            hasher.update(chunk)
            out.write(chunk)
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    return hasher.hexdigest()


def _progress_bar(response, desc: str):
    """A tqdm bar when tqdm is installed, else None (progress is a nicety, not a dependency)."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    headers = getattr(response, "headers", None)
    length = str(headers.get("Content-Length", "")) if headers is not None else ""
    total = int(length) if length.isdigit() else None
    return tqdm(total=total, unit="B", unit_scale=True, desc=desc, leave=False)


def download_dataset(
    name: str,
    dest: str | os.PathLike | None = None,
    base_url: str | None = None,
    opener=None,
    progress: bool = True,
) -> Path:
    """Download the four files of ``name`` into ``dest`` (default: the cache folder)."""
    source = SOURCES[name]
    dest = Path(dest) if dest is not None else cache_dir(name)
    base = base_url or source.base_url
    if not base.endswith("/"):
        base += "/"
    for file_name, checksum in source.checksums.items():
        target = dest / file_name
        if target.is_file() and _hash_file(target, checksum[0]) == checksum[1]:
            continue
        download_file(base + file_name, target, checksum, opener=opener, progress=progress)
    return dest


def _hash_file(path: Path, algorithm: str) -> str:
    hasher = hashlib.new(algorithm)
    with open_input(path, "a dataset file") as stream:
        while chunk := stream.read(1 << 20):
            hasher.update(chunk)
    return hasher.hexdigest()


def load_dataset(
    name_or_path: str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    progress: bool = True,
    task: str = "classification",
    sample_weight: str | None = None,
) -> Dataset:
    """Load ``fashion-mnist``, ``mnist``, a regression set (``diabetes``, ``friedman1``),
    or a user ``.npz`` / ``.csv`` file.

    Named datasets come from the first folder in ``search_paths`` that holds all four
    IDX files, else are downloaded into the cache folder (``download=True``). Images
    come back as uint8 ``(n, 784)``, labels as int32.

    ``.npz`` files hold ``X_train, y_train, X_test, y_test``, or ``X, y``; ``.csv``
    files hold one table. For ``X, y`` and CSV, a seeded shuffle (``TEST_SEED``)
    puts the last ``TEST_FRACTION`` (20%) of the samples in the test set.
    ``task`` ("classification" or "regression") applies to user files only. ``sample_weight``
    names the training rows' weights in a user file: an array of the ``.npz`` (one per row of
    ``X`` or ``X_train``) or a CSV column (its header name or index), which then is no feature.
    """
    check_task(task)
    key = find(str(name_or_path), SOURCES)
    path = Path(name_or_path)
    suffix = path.suffix.lower()
    if sample_weight is not None and (key is not None or suffix not in (".npz", ".csv")):
        raise ConfigError(f"sample_weight {sample_weight!r}: weights come from a .npz or .csv dataset file")
    if key is not None:
        return _load_named(key, data_dir, download, progress)

    if find(str(name_or_path), REGRESSION_DATASETS):
        return load_regression(str(name_or_path))
    if suffix == ".npz":
        return _load_npz_dataset(path, task, sample_weight)
    if suffix == ".csv":
        if sample_weight is None:
            return _from_xy(path, *load_csv(path, task=task), task)
        X, y, weights = load_csv(path, task=task, weight_column=sample_weight)
        return _from_xy(path, X, y, task, weights, sample_weight)
    raise DataError(
        f"dataset {str(name_or_path)!r}: not a known name or a .npz/.csv file; use one of "
        f"{', '.join([*SOURCES, *REGRESSION_DATASETS])}, or a path ending in .npz or .csv"
    )


def _load_named(name: str, data_dir, download: bool, progress: bool) -> Dataset:
    folders = search_paths(name, data_dir)
    files = next((found for folder in folders if (found := find_idx_files(folder))), None)
    if files is None:
        reason = "downloading is switched off"
        if download:
            try:
                files = find_idx_files(download_dataset(name, progress=progress))
            except DownloadError as exc:
                reason = f"the download failed: {exc}"
        if files is None:
            raise DataError(_not_found_message(name, folders, reason))
    arrays = [read_idx(path, "the path or the --data-dir folder") for path in files]
    X_train, y_train = _check_idx_pair(arrays[0], arrays[1], files[0], files[1], name)
    X_test, y_test = _check_idx_pair(arrays[2], arrays[3], files[2], files[3], name)
    return Dataset(name, X_train, y_train, X_test, y_test, list(SOURCES[name].class_names), "classification")


def _not_found_message(name: str, folders: list[Path], reason: str) -> str:
    searched = "\n".join(f"  - {folder}" for folder in folders)
    files = ", ".join(f"{stem}.gz" for stem in IDX_FILES)
    ways = []
    package = SOURCES[name].apt_package
    if package:
        ways.append(f"  - install it: sudo apt-get install {package}")
    ways.append(f"  - put the files ({files}) in one of the folders above, or pass --data-dir FOLDER")
    return f"dataset {name!r} not found and {reason}.\nSearched:\n{searched}\nTo get the data, either:\n" + "\n".join(
        ways
    )


def _check_idx_pair(
    images: np.ndarray, labels: np.ndarray, images_file: Path, labels_file: Path, name: str
) -> tuple[np.ndarray, np.ndarray]:
    if images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE or images.dtype != np.uint8:
        raise DataError(
            f"{images_file}: expected uint8 images of shape (n, 28, 28), got {images.dtype} {images.shape}; "
            "this is not an MNIST-style image file"
        )
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise DataError(
            f"{labels_file}: expected a 1-D uint8 label array, got {labels.dtype} {labels.shape}; "
            "this is not an MNIST-style label file"
        )
    if len(images) != len(labels):
        raise DataError(
            f"{images_file} has {len(images)} images but {labels_file} has {len(labels)} labels; "
            "the two files must come from the same release"
        )
    num_classes = len(SOURCES[name].class_names)
    bad = labels >= num_classes
    if bad.any():
        index = int(np.argmax(bad))
        raise DataError(
            f"{labels_file}: label {int(labels[index])} at index {index} is outside [0, {num_classes}); "
            "the file is corrupt or belongs to another dataset"
        )
    return images.reshape(len(images), -1), labels.astype(np.int32)


def _load_npz_dataset(path: Path, task: str, sample_weight: str | None = None) -> Dataset:
    arrays = read_npz_arrays(path, ("X_train", "y_train", "X_test", "y_test"), ("X", "y"))
    if sample_weight is not None:
        try:
            arrays[sample_weight] = read_npz_arrays(path, (sample_weight,))[sample_weight]
        except DataError:
            raise DataError(
                f"sample_weight {sample_weight!r}: {path} holds no such array; give --sample-weight the name of "
                "an array of one weight per training row"
            ) from None
    if "X" in arrays:
        X, y = check_xy(arrays["X"], arrays["y"], task, str(path))
        return _from_xy(path, X, y, task, arrays.get(sample_weight), sample_weight)
    X_train, y_train = check_xy(arrays["X_train"], arrays["y_train"], task, f"{path} (X_train, y_train)")
    X_test, y_test = check_xy(arrays["X_test"], arrays["y_test"], task, f"{path} (X_test, y_test)")
    data = _make(path, X_train, y_train, X_test, y_test, task)
    data.w_train = _weights(arrays.get(sample_weight), len(X_train), path, sample_weight)
    return data


def _weights(weights, rows: int, path: Path, key) -> np.ndarray | None:
    """``--sample-weight``'s array, checked (numbers >= 0, finite, one per row, not all zero)."""
    if weights is None:
        return None
    try:
        return check_sample_weight(weights, rows, f"sample_weight {key!r} of {path}")
    except ConfigError as exc:
        raise DataError(str(exc)) from None


def _from_xy(path: Path, X: np.ndarray, y: np.ndarray, task: str, weights=None, key=None) -> Dataset:
    if len(X) < 2:
        raise DataError(f"{path}: only {len(X)} sample; need at least 2 to hold some out for testing")
    weights = _weights(weights, len(X), path, key)
    train, test = held_out_rows(len(X))
    data = _make(path, X[train], y[train], X[test], y[test], task)
    data.w_train = None if weights is None else weights[train]
    return data


def _make(path: Path, X_train, y_train, X_test, y_test, task: str) -> Dataset:
    if X_train.shape[1] != X_test.shape[1] or y_train.shape[1:] != y_test.shape[1:]:
        raise DataError(
            f"{path}: train has {X_train.shape[1]} features / targets {y_train.shape[1:]} but test has "
            f"{X_test.shape[1]} / {y_test.shape[1:]}; both must have the same columns"
        )
    if X_train.dtype != X_test.dtype:
        X_train, X_test = X_train.astype(np.float32), X_test.astype(np.float32)
    class_names: list[str] = []
    if task == "classification":
        top = int(max(y_train.max(), y_test.max()))
        if top >= MAX_CLASSES:
            raise DataError(
                f"{path}: labels go up to {top}, over {MAX_CLASSES} classes; number the classes 0, 1, 2, ..."
            )
        if top == 0:
            raise DataError(
                f"{path}: every label is 0, a single class; a classifier needs at least two "
                "(labels 0 and 1), or use --task regression for real-valued targets"
            )
        class_names = [str(c) for c in range(top + 1)]
    return Dataset(path.stem, X_train, y_train, X_test, y_test, class_names, task)
