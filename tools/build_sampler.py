"""Build spatial-correlation-sampler's CPU extension and install it into this Python's environment.

The compiled peer of the flow suite and of ``tests/test_compat.py``; nothing else in xcorr needs it.
Its PyPI sdist builds only with CUDA (``setup.py`` makes a ``CUDAExtension`` unless ``CPU_ONLY``
is set; the repository's ``setup_cpu.py``, which sets it, is not in the sdist), and its CPU build
includes ``c10/cuda/CUDAGuard.h`` unconditionally. This script:

1. downloads the sdist of ``--version`` from PyPI (``pip download`` cannot fetch it: pip prepares
   the metadata, which runs ``setup.py``, which needs ``CUDA_HOME``) and checks its SHA-256, or
   takes ``--source``, an unpacked sdist or a checkout of ClementPinard/Pytorch-Correlation-extension;
2. patches a copy: the CUDA include under ``#ifdef USE_CUDA`` (the macro the CUDA build defines),
   ``CPU_ONLY = True`` in ``setup.py`` (what ``setup_cpu.py`` does) and ``ctx.saved_tensors`` for
   the deprecated ``ctx.saved_variables`` (as in the repository since);
3. runs ``python -m pip install --no-build-isolation --no-deps`` on it, so that it compiles
   against the torch already installed (a C++17 compiler with OpenMP is needed).

Usage (``make sampler`` runs it with the virtual environment's Python)::

    python tools/build_sampler.py [--version 0.5.0] [--source DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

PROJECT = "spatial-correlation-sampler"
#: The sdists' SHA-256 digests as PyPI lists them; the CPU code is the same in both.
SDISTS = {
    "0.5.0": "872d720d3740f3caf0d15620af5180af8a1971568f9c7cda3664757262688d11",
    "0.4.0": "de0ee48dba0ab5ba10f64f6f0c2fe400631f2474af07ee6a18a0b96fa8fdb007",
}
CUDA_INCLUDE = "#include <c10/cuda/CUDAGuard.h>\n"
GUARDED_INCLUDE = "#ifdef USE_CUDA\n" + CUDA_INCLUDE + "#endif\n"


def download(version: str, into: Path) -> Path:
    """The unpacked sdist of ``version``, its digest checked against :data:`SDISTS`."""
    if version not in SDISTS:
        raise SystemExit(f"--version must be one of {', '.join(SDISTS)} (their digests are known), got {version}")
    with urllib.request.urlopen(f"https://pypi.org/pypi/{PROJECT}/json", timeout=60) as reply:
        files = json.load(reply)["releases"][version]
    (sdist,) = (f for f in files if f["packagetype"] == "sdist")
    with urllib.request.urlopen(sdist["url"], timeout=60) as reply:
        data = reply.read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != SDISTS[version]:
        raise SystemExit(f"{sdist['filename']}: SHA-256 {digest}, expected {SDISTS[version]}")
    archive = into / sdist["filename"]
    archive.write_bytes(data)
    with tarfile.open(archive) as tar:
        if hasattr(tarfile, "data_filter"):  # no absolute paths, links out or devices
            tar.extractall(into, filter="data")
        else:  # a Python before the filters (the archive's digest is checked)
            tar.extractall(into)
    (root,) = (p for p in into.iterdir() if p.is_dir())
    return root


def patch(root: Path) -> None:
    """Make ``root`` build without CUDA (the include guarded, ``CPU_ONLY = True``), and its backward
    read ``ctx.saved_tensors``, as the repository's code does since the 0.5.0 sdist (torch
    deprecates ``saved_variables``)."""
    module = root / "Correlation_Module"
    replace(module / "correlation_sampler.cpp", CUDA_INCLUDE, GUARDED_INCLUDE)
    replace(root / "setup.py", "CPU_ONLY = False\n", "CPU_ONLY = True\n")
    replace(
        module / "spatial_correlation_sampler" / "spatial_correlation_sampler.py",
        "input1, input2 = ctx.saved_variables\n",
        "input1, input2 = ctx.saved_tensors\n",
    )


def replace(path: Path, old: str, new: str) -> None:
    """Replace the one ``old`` in ``path`` by ``new`` (nothing to do where ``new`` is there already)."""
    text = path.read_text()
    if new in text:
        return
    if text.count(old) != 1:
        raise SystemExit(f"{path}: expected one {old.strip()!r} to patch, found {text.count(old)}")
    path.write_text(text.replace(old, new))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", default="0.5.0", help="the sdist to download (default: %(default)s)")
    parser.add_argument("--source", type=Path, help="build this unpacked sdist or checkout instead")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sampler-build-") as tmp:
        work = Path(tmp)
        if args.source is None:
            root = download(args.version, work)
        else:
            root = work / "src"
            shutil.copytree(args.source, root, ignore=shutil.ignore_patterns(".git", "build", "*.egg-info"))
        patch(root)
        pip = [sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps"]
        subprocess.run([*pip, "--quiet", "setuptools"], check=True)
        subprocess.run([*pip, str(root)], check=True)
    # Imported in a fresh interpreter, as the suite and the tests will.
    check = "import spatial_correlation_sampler as s, torch; print(s.__file__, 'on torch', torch.__version__)"
    subprocess.run([sys.executable, "-c", check], check=True, cwd=tempfile.gettempdir())


if __name__ == "__main__":
    main()
