"""Batched reads (`kcomp.data.batched`): a batch's files decoded on threads in the main process, serially in a
DataLoader worker, with the same items, seeded augmentations included, as reading them one by one."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

import kcomp.data.batched as batched
from kcomp.data import transforms
from kcomp.data.datasets import ImageDataset, SeededSampler
from kcomp.errors import BadInput


@pytest.fixture
def two_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("kcomp.data.pool.default_workers", lambda: 2)


class _ReadThreads(batched.ThreadedReads, Dataset):
    """Items are the thread each row was read on, after a read slow enough for the pool to use both threads."""

    def __init__(self, n: int) -> None:
        self.n, self.barrier = n, threading.Barrier(2, timeout=5)

    def __len__(self) -> int:
        return self.n

    def read(self, idx: int) -> int:
        if torch.utils.data.get_worker_info() is None and idx < 2:
            self.barrier.wait()  # rows 0 and 1 are read at the same time, or this times out
        return threading.get_ident()

    def item(self, entry: int, raw: int) -> int:
        return raw


def test_main_process_reads_a_batch_on_a_thread_per_core(two_cores: None) -> None:
    (threads,) = DataLoader(_ReadThreads(8), batch_size=8, collate_fn=list)
    assert len(set(threads)) == 2 and threading.get_ident() not in threads


def test_loader_workers_read_serially(two_cores: None) -> None:
    batches = list(DataLoader(_ReadThreads(8), batch_size=4, num_workers=1, collate_fn=list))
    assert [len(set(b)) for b in batches] == [1, 1]


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    from kcomp.competitions.demo import make_cls_layout

    raw = make_cls_layout(tmp_path_factory.mktemp("jpegs"), n_train=12, n_test=0, size=(120, 160))
    return sorted((raw / "train_images").glob("*.jpg"))


def test_seeded_augmented_batches_equal_items_read_one_by_one(two_cores: None, jpegs: list[Path]) -> None:
    ds = ImageDataset(jpegs, list(range(len(jpegs))), transforms.cls_train(64, "strong"), reduce_to=64)
    sampler = SeededSampler(len(ds), seed=3)
    xs, ys = zip(*DataLoader(ds, batch_size=5, sampler=sampler), strict=True)
    singles = [ds[entry] for entry in sampler]
    np.testing.assert_array_equal(torch.cat(xs).numpy(), torch.stack([x for x, _ in singles]).numpy())
    assert torch.cat(ys).tolist() == [y for _, y in singles]


def test_a_bad_file_in_a_batch_names_it(two_cores: None, jpegs: list[Path], tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    ds = ImageDataset([*jpegs[:3], broken], None, transforms.cls_eval(64), reduce_to=64)
    with pytest.raises(BadInput, match="broken.jpg"):
        next(iter(DataLoader(ds, batch_size=4)))
