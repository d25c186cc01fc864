"""HostStage: results in submission order, errors re-raised in the caller, bounded batches in flight."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from kcomp.runtime.host_stage import HostStage


def test_results_keep_submission_order_and_values() -> None:
    def slow_rows(a: np.ndarray) -> list[float]:
        time.sleep(0.002 * (int(a[0, 0]) % 3))  # uneven host work must not reorder anything
        return [float(v) for v in a[:, 0]]

    stage = HostStage(slow_rows)
    expected = []
    for b in range(20):
        t = torch.arange(b * 4, b * 4 + 4, dtype=torch.float32)[:, None].repeat(1, 3)
        stage.submit(t)
        expected += t[:, 0].tolist()
    assert stage.results() == expected


def test_host_work_runs_off_the_calling_thread() -> None:
    seen = []
    stage = HostStage(lambda a: seen.append(threading.current_thread().name) or [a.sum()])
    stage.submit(torch.ones(2, 2))
    assert stage.results() == [4.0]
    assert seen == ["kcomp-host-stage"]


def test_error_in_host_work_is_raised_in_the_caller() -> None:
    def boom(a: np.ndarray) -> list[int]:
        raise ValueError("bad map")

    stage = HostStage(boom, depth=1)
    with pytest.raises(ValueError, match="bad map"):
        for _ in range(10):  # submit() sees the error once the thread has hit it, or results() does
            stage.submit(torch.zeros(1))
        stage.results()


def test_inference_tensors_can_be_handed_over() -> None:
    stage = HostStage(lambda a: list(a))
    with torch.inference_mode():
        stage.submit(torch.tensor([1.0, 2.0]))
    assert [float(v) for v in stage.results()] == [1.0, 2.0]
