"""Host-memory settings for steady-state CPU inference (hlrp_ros.allocator).

The allocator settings are process-wide, so every behavioural check runs in a fresh interpreter.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hlrp_ros import allocator

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc mallopt")


def run_python(code: str, env: dict[str, str] | None = None) -> str:
    """Runs ``code`` in a fresh interpreter with this one's import path; returns its stdout."""
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **(env or {})}
    full_env.pop(allocator.THP_ENV, None)
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full_env, capture_output=True,
                          text=True, timeout=120, check=True)
    return done.stdout.strip()


FAULTS_PER_ROUND = """
    import os, resource
    from hlrp_ros import allocator
    if os.environ["FREED_MEMORY"] == "keep":
        assert allocator.keep_freed_memory().applied
    import numpy as np

    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    def one_round():  # like one chunk: several 12 MiB activations written, then all freed
        buffers = [np.ones(3 << 20, dtype=np.float32) for _ in range(4)]
        del buffers

    one_round(), one_round()
    start = faults()
    for _ in range(10):
        one_round()
    print((faults() - start) / 10)
"""


@glibc_only
@pytest.mark.parametrize("mode", ["keep", "default"])
def test_keep_freed_memory_makes_repeated_rounds_of_activations_fault_free(mode):
    faults = float(run_python(FAULTS_PER_ROUND, env={"FREED_MEMORY": mode}))
    if mode == "keep":
        assert faults < 20, f"{faults} page faults per round with freed memory kept"
    else:  # the defaults trim the heap top, so every round touches fresh pages: what the setting removes
        assert faults > 1000, f"only {faults} faults per round with glibc's defaults"


def thp_mode(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "enabled"
    path.write_text(text)
    return path


@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv(allocator.THP_ENV, raising=False)
    monkeypatch.delitem(sys.modules, "torch", raising=False)  # restored after the test
    return monkeypatch


def test_huge_pages_are_requested_when_the_kernel_allows_them(clean_env, tmp_path):
    setting = allocator.request_huge_pages(thp_mode(tmp_path, "always [madvise] never\n"))
    assert setting.applied
    assert os.environ[allocator.THP_ENV] == "1"


def test_huge_pages_are_not_requested_when_the_kernel_has_them_off(clean_env, tmp_path):
    setting = allocator.request_huge_pages(thp_mode(tmp_path, "always madvise [never]\n"))
    assert not setting.applied and "[never]" in setting.reason
    assert allocator.THP_ENV not in os.environ


def test_huge_pages_are_not_requested_without_the_kernel_switch(clean_env, tmp_path):
    setting = allocator.request_huge_pages(tmp_path / "missing")
    assert not setting.applied and allocator.THP_ENV not in os.environ


def test_huge_pages_refused_once_torch_is_imported(clean_env, tmp_path):
    clean_env.setitem(sys.modules, "torch", object())
    setting = allocator.request_huge_pages(thp_mode(tmp_path, "always [madvise] never\n"))
    assert not setting.applied and "torch already imported" in setting.reason
    assert allocator.THP_ENV not in os.environ


def test_an_explicit_environment_setting_wins(clean_env, tmp_path):
    clean_env.setenv(allocator.THP_ENV, "0")
    setting = allocator.request_huge_pages(thp_mode(tmp_path, "always [madvise] never\n"))
    assert not setting.applied and "set by the environment" in setting.reason
    assert os.environ[allocator.THP_ENV] == "0"


@pytest.mark.skipif(not allocator.THP_MODE.is_file() or "[never]" in allocator.THP_MODE.read_text(),
                    reason="kernel without transparent huge pages")
def test_requested_huge_pages_back_large_torch_tensors():
    anon_huge_kib = run_python("""
        from hlrp_ros import allocator
        assert allocator.request_huge_pages().applied
        import torch
        weights = torch.ones(16 << 20)  # 64 MiB, written
        rollup = open("/proc/self/smaps_rollup").read().splitlines()
        print(next(int(line.split()[1]) for line in rollup if line.startswith("AnonHugePages")))
    """)
    assert int(anon_huge_kib) >= 32 << 10, f"{anon_huge_kib} KiB on huge pages"
