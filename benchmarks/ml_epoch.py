"""PyTorch epochs over a mount: images per second, cold and warm, against the same files on local disk.

Starts the emulator with the sample workspace, mounts it (``encordfs.mount``, fresh cache dir), and
iterates a ``DataLoader(EncordImages(mount), num_workers=4, batch_size=16)`` twice: epoch 1 reads
every image from the emulator (cold caches), epoch 2 from encordfs's caches (and the kernel's page
cache, which a mount keeps with ``keep_cache``). Then the same loader over a local copy of the same
files. Prints one JSON object::

    {"ml_epoch1_img_s": ..., "ml_epoch2_img_s": ..., "ml_local_img_s": ..., "ml_images": N, "ml_workers": 4}

Needs torch (the extra ``encordfs[ml]``: ``pip install torch==2.14.1``); run from the repository root:
``.venv/bin/python benchmarks/ml_epoch.py [--workers N] [--repeat N]`` (best of ``repeat`` per figure).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch

import encordfs
from encordfs.ml import EncordImages, ResizeToTensor
from harness.emulator import RunningEmulator

warnings.filterwarnings("ignore", message="This DataLoader will create")


def epoch_img_s(root: Path, workers: int) -> tuple[float, int]:
    dataset = EncordImages(root, label_key="split", transform=ResizeToTensor((128, 128)))
    loader = torch.utils.data.DataLoader(dataset, batch_size=16, num_workers=workers, shuffle=False)
    start = time.perf_counter()
    n = sum(len(targets) for _, targets in loader)
    return n / (time.perf_counter() - start), n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=1, help="local and warm epochs: best of N")
    args = parser.parse_args()
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
    work = Path(tempfile.mkdtemp(prefix="encordfs-ml-bench-"))
    try:
        with RunningEmulator(["--sample"]) as emu:
            (work / "mnt").mkdir()
            with encordfs.mount(
                work / "mnt", domain=emu.domain, ssh_key_file=emu.key_file, cache_dir=work / "cache", read_only=True
            ) as m:
                epoch1, n = epoch_img_s(m.path, args.workers)
                epoch2 = max(epoch_img_s(m.path, args.workers)[0] for _ in range(args.repeat))
                shutil.copytree(
                    m.path, work / "local", ignore=shutil.ignore_patterns(".encordfs"), copy_function=shutil.copyfile
                )
            local = max(epoch_img_s(work / "local", args.workers)[0] for _ in range(args.repeat))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        json.dumps(
            {
                "ml_epoch1_img_s": round(epoch1, 1),
                "ml_epoch2_img_s": round(epoch2, 1),
                "ml_local_img_s": round(local, 1),
                "ml_images": n,
                "ml_workers": args.workers,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
