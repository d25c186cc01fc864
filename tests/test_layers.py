"""LayerStack keeps no page of a layer mapped after reading a whole fragment window by window (Linux pagemap)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from kcomp.data.ink_patches import window_positions
from kcomp.data.layers import RELEASE_PAGES, LayerStack

pytestmark = pytest.mark.skipif(not (RELEASE_PAGES and sys.platform.startswith("linux")),
                                reason="needs madvise and /proc/self/pagemap")


def mapped_pages(m: object) -> int:
    """Pages of a memory map present in this process's page tables (pagemap bit 63; readable unprivileged)."""
    buf = np.frombuffer(m, np.uint8)  # type: ignore[call-overload]
    addr, pages = buf.__array_interface__["data"][0], -(-len(buf) // 4096)
    with open("/proc/self/pagemap", "rb") as pm:
        pm.seek(addr // 4096 * 8)
        entries = np.frombuffer(pm.read(pages * 8), np.uint64)
    return int(((entries >> np.uint64(63)) & np.uint64(1)).sum())


def test_reading_a_fragment_leaves_no_layer_page_mapped(tmp_path: Path):
    """Tiles in row order, as inference reads them: pages faulted in around a window (fault-around, large page-cache
    folios) used to stay mapped above each tile row and add up to about half of every layer."""
    rng = np.random.default_rng(0)
    h, w, patch = 1024, 768, 64
    for i in range(3):
        tifffile.imwrite(tmp_path / f"{i:02d}.tif", rng.integers(0, 65535, (h, w), dtype=np.uint16))
    stack = LayerStack(tmp_path)
    pos = window_positions(np.ones((h, w), bool), patch, patch // 2)
    for y, x in pos:
        stack.read([0, 1, 2], y, y + patch, x, x + patch)
    assert len(stack._maps) == 3
    assert [mapped_pages(m) for m in stack._maps.values()] == [0, 0, 0]
    stack.close()
