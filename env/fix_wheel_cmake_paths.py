"""Point the ROS wheels' CMake files at this machine's Python and numpy headers.

The ROS 2 Kilted wheels on the Python registry were built in a manylinux image whose
interpreter lives under /opt/python/cp311-cp311; several installed ``*.cmake`` files
keep that builder's include directories, and message generation for our package fails
until they name this interpreter's headers. Idempotent: a second run rewrites nothing.
Only the wheel environment needs this; a sourced ROS distro never runs it.
"""

from __future__ import annotations

import argparse
import sys
import sysconfig
from pathlib import Path

BUILDER_PYTHON_INCLUDE = "/opt/python/cp311-cp311/include/python3.11"
BUILDER_NUMPY_INCLUDE = "/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include"


def local_replacements() -> dict[str, str]:
    """Map each wheel-builder path to this interpreter's equivalent."""
    import numpy

    return {
        BUILDER_NUMPY_INCLUDE: numpy.get_include(),
        BUILDER_PYTHON_INCLUDE: sysconfig.get_paths()["include"],
    }


def rewrite_cmake_files(prefix: Path, replacements: dict[str, str]) -> list[Path]:
    """Rewrite every ``*.cmake`` file under ``prefix`` that names a builder path."""
    changed = []
    for path in sorted(prefix.rglob("*.cmake")):
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
        new_text = text
        for old, new in replacements.items():
            new_text = new_text.replace(old, new)
        if new_text != text:
            path.write_text(new_text, encoding="utf-8", errors="surrogateescape")
            changed.append(path)
    return changed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefix", type=Path, default=Path(sys.prefix),
                        help="environment whose CMake files to fix (default: this venv)")
    args = parser.parse_args()
    changed = rewrite_cmake_files(args.prefix, local_replacements())
    print(f"fix_wheel_cmake_paths: rewrote {len(changed)} CMake file(s) under {args.prefix}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
