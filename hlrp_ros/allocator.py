"""Process-wide host-memory settings for steady-state CPU inference.

Two things cost a CPU policy time at every chunk without doing any arithmetic:

* **Page faults.** Every chunk allocates and frees the same activation buffers (SigLIP's 1024x3072 MLP
  output alone is 12 MiB). With glibc's defaults such blocks are mmapped and unmapped on every call,
  or handed back to the kernel when the heap top is trimmed, so the next chunk touches fresh pages:
  about 15000-20000 minor faults per ``smolvla-base`` chunk on our 2-vCPU VMs. :func:`keep_freed_memory`
  keeps freed memory in the heap (0 faults per chunk measured), the usual real-time Linux advice
  (ROS 2's ``rttest`` does the same). The price: the process keeps its peak heap.
* **TLB misses.** Each denoising step streams ~400 MB of expert weights through 4 KiB pages.
  :func:`request_huge_pages` turns on PyTorch's switch that backs tensors of 2 MiB and more with
  transparent huge pages (``THP_MEM_ALLOC_ENABLE``): about 4 % faster weight-streaming GEMMs measured.

Neither changes a single result bit. This module does not import torch: PyTorch reads its switch once,
so :func:`request_huge_pages` has to run before torch allocates anything.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path

# mallopt parameter numbers from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

#: glibc's largest accepted mmap threshold on 64-bit (``DEFAULT_MMAP_THRESHOLD_MAX``). Blocks at least this
#: big are still mmapped, so a one-off huge temporary (a checkpoint being converted) is returned at once.
MAX_MMAP_THRESHOLD = 32 << 20

#: PyTorch's environment switch for huge-page-backed CPU tensors (read once, at the first allocation).
THP_ENV = "THP_MEM_ALLOC_ENABLE"
THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


@dataclass(frozen=True)
class HostMemorySetting:
    """What a call did: ``applied`` False means nothing changed, and ``reason`` says why."""

    applied: bool
    reason: str


def _glibc_mallopt():
    """glibc's ``mallopt``, or None (musl, macOS and Windows have none with these parameters)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # noqa: B018 (the lookup raises AttributeError outside glibc)
    except (OSError, AttributeError):
        return None
    fn = libc.mallopt
    fn.argtypes = (ctypes.c_int, ctypes.c_int)
    fn.restype = ctypes.c_int
    return fn


def keep_freed_memory() -> HostMemorySetting:
    """Stops glibc from returning freed memory to the kernel (no heap trimming; mmap only >= 32 MiB).

    Best called once after loading the model (load-time temporaries are gone by then); calling it again
    is harmless. A no-op outside glibc.
    """
    mallopt = _glibc_mallopt()
    if mallopt is None:
        return HostMemorySetting(False, "not glibc: malloc left as is")
    # A trim threshold of -1 reads as SIZE_MAX: the heap top is never trimmed. Setting the mmap threshold
    # also turns off glibc's dynamic threshold, which otherwise drops back after large frees.
    trim = mallopt(M_TRIM_THRESHOLD, -1)
    mmap = mallopt(M_MMAP_THRESHOLD, MAX_MMAP_THRESHOLD)
    if not (trim and mmap):
        return HostMemorySetting(False, f"mallopt refused: trim threshold {'ok' if trim else 'refused'}, "
                                        f"mmap threshold {'ok' if mmap else 'refused'}")
    return HostMemorySetting(True, "glibc keeps freed memory (no trimming, mmap only for blocks >= 32 MiB)")


def request_huge_pages(thp_mode_file: Path = THP_MODE) -> HostMemorySetting:
    """Asks PyTorch to back CPU tensors of 2 MiB and more with transparent huge pages.

    Sets ``THP_MEM_ALLOC_ENABLE=1`` unless the environment already sets it (an explicit ``0`` wins).
    Refuses, changing nothing, when the kernel has transparent huge pages off or torch is already
    imported (its allocator may have read the switch; set the variable in the environment instead).
    """
    value = os.environ.get(THP_ENV)
    if value is not None:
        return HostMemorySetting(value == "1", f"{THP_ENV}={value} set by the environment")
    try:
        mode = thp_mode_file.read_text()
    except OSError:
        return HostMemorySetting(False, "no transparent huge pages on this system")
    if "[never]" in mode:
        return HostMemorySetting(False, "transparent huge pages are off in the kernel ([never])")
    if "torch" in sys.modules:
        return HostMemorySetting(False, f"torch already imported: set {THP_ENV}=1 in the environment instead")
    os.environ[THP_ENV] = "1"
    return HostMemorySetting(True, "tensors >= 2 MiB on transparent huge pages")
