"""Data on the host: files -> validated NumPy arrays. No device code lives here."""

from xpnet.data.datasets import (
    FASHION_MNIST_CLASSES,
    MNIST_CLASSES,
    SOURCES,
    Dataset,
    DownloadError,
    cache_dir,
    download_dataset,
    download_file,
    load_dataset,
    search_paths,
)
from xpnet.data.idx import MAX_IDX_BYTES, read_idx, write_idx
from xpnet.data.prep import SCALINGS, Scaling, split_rows, train_val_split
from xpnet.data.tabular import check_xy, load_csv, load_npz

__all__ = [
    "FASHION_MNIST_CLASSES",
    "MAX_IDX_BYTES",
    "MNIST_CLASSES",
    "SCALINGS",
    "SOURCES",
    "Dataset",
    "DownloadError",
    "Scaling",
    "cache_dir",
    "check_xy",
    "download_dataset",
    "download_file",
    "load_csv",
    "load_dataset",
    "load_npz",
    "read_idx",
    "search_paths",
    "split_rows",
    "train_val_split",
    "write_idx",
]
