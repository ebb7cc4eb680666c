"""Training speed of the engine on one GPU, on a CREMA-D-shaped cache of noise; and a fixed-work CPU figure.

    python benchmarks/bench_gpu.py                       # on a CUDA machine: the GPU table, then the CPU figure
    python benchmarks/bench_gpu.py --device cpu --clips 96 --size 32 --methods joint --pack 2  # same path, small

Writes a prepared cache of noise shaped like CREMA-D's (6,698 train + 744 test clips, audio 257 x 188
float16, 3 candidate frames of 224 x 224 uint8 per clip) and trains each method on it with the benchmark
protocol (ResNet-18 x 2, batch 64, 1 frame at 224, the OGM-GE spectrogram), `--epochs` epochs, one run
at a time in this process. Per method it prints: training samples/s (training steps only), the median
epoch wall time over the epochs after the first (training + validation + test + checkpoints), the
implied 100-epoch time, the GPU utilisation (nvidia-smi, sampled every 0.2 s), and the host-device
syncs per training step (torch.cuda.set_sync_debug_mode; evaluation and the epoch-end reads included).
Then `joint` with 2 and 4 runs packed on the GPU (separate processes): samples/s of all of them together.
Without CUDA it says so and prints only the CPU figure: samples/s of the README run (joint on the
embedded dataset, 2 epochs) at 1 and 2 threads.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mmbench.config import parse_sets, resolve
from mmbench.registry import DATASETS
from mmbench.results import read_epochs, read_runs
from mmbench.train import engine

CREMAD_TRAIN, CREMAD_TEST = 6698, 744
SYNC_WARNING = "synchronizing CUDA operation"


def write_noise_cache(folder: Path, clips: int, frames: int = 3, size: int = 224) -> Path:
    """A prepared cache that `--data-root` accepts as is (a folder with manifest.json)."""
    rng = np.random.default_rng(0)
    classes = DATASETS.get("cremad").class_names({"class_order": "ogm"})
    n_test = max(len(classes), round(clips * CREMAD_TEST / (CREMAD_TRAIN + CREMAD_TEST)))
    folder.mkdir(parents=True, exist_ok=True)
    audio = np.lib.format.open_memmap(folder / "audio.npy", "w+", np.float16, (clips, 257, 188))
    video = np.lib.format.open_memmap(folder / "frames.npy", "w+", np.uint8, (clips * frames, 3, size, size))
    for start in range(0, clips, 256):  # in chunks: the whole of it is 3.6 GB
        stop = min(start + 256, clips)
        audio[start:stop] = rng.standard_normal((stop - start, 257, 188), dtype=np.float32).astype(np.float16)
        video[start * frames:stop * frames] = rng.integers(0, 256, ((stop - start) * frames, 3, size, size), np.uint8)
    audio.flush(), video.flush()
    pd.DataFrame({
        "clip": [f"{i:05d}" for i in range(clips)], "group": [f"{i % 91}" for i in range(clips)],
        "label": [classes[i % len(classes)] for i in range(clips)],
        "frame_start": np.arange(clips) * frames, "frame_count": np.full(clips, frames),
        "split": ["test" if i < n_test else "train" for i in range(clips)],
    }).to_parquet(folder / "index.parquet", index=False)
    manifest = {"cache_version": 0, "fingerprint": "noise", "root": str(folder), "layout": "noise",
                "split_files": ["noise"], "preprocessing": {"frontend": "ogm-stft"}, "n_bad": 0, "n_truncated": 0,
                "n_clips": clips, "audio_shape": [257, 188], "frame_size": size, "n_frames": clips * frames}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


class GpuSampler:
    """nvidia-smi's utilisation of GPU 0, sampled on a thread while a run trains."""

    def __init__(self, period_s: float = 0.2) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(period_s,), daemon=True)

    def _loop(self, period_s: float) -> None:
        while not self._stop.wait(period_s):
            with contextlib.suppress(OSError, subprocess.SubprocessError, ValueError):
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                      "-i", "0"], capture_output=True, text=True, timeout=5).stdout
                self.samples.append(float(out.split()[0]))

    def __enter__(self) -> GpuSampler:
        if shutil.which("nvidia-smi"):
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def mean(self) -> float:
        return statistics.fmean(self.samples) if self.samples else float("nan")


EXTRA: dict[str, str] = {}  # --set KEY=VALUE from the command line, e.g. compile=default


def settings(cache: Path, epochs: int, device: str, size: int) -> dict[str, object]:
    return {"root": str(cache), "epochs": epochs, "device": device, "image_size": size, "frames": 1,
            "batch_size": 64, "num_threads": 0, **EXTRA}


def one_method(method: str, cache: Path, out: Path, epochs: int, device: str, size: int) -> dict[str, float]:
    cfg = resolve(method, "cremad", 0, overrides=settings(cache, epochs, device, size))
    syncs = 0
    with GpuSampler() as sampler, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if device.startswith("cuda"):
            torch.cuda.set_sync_debug_mode("warn")
        try:
            row = engine.run(cfg, out)
        finally:
            if device.startswith("cuda"):
                torch.cuda.set_sync_debug_mode("default")
        syncs = sum(SYNC_WARNING in str(w.message) for w in caught)
    epoch_s = read_epochs(out)
    epoch_s = epoch_s[epoch_s["run_id"] == cfg.run_id]["epoch_wall_s"].tolist()
    steps = -(-int(row["n_train"]) // cfg.batch_size) * epochs
    median = statistics.median(epoch_s[1:] or epoch_s)
    return {"bf16": row["bf16"], "channels_last": row["channels_last"], "compile": row["compile"],
            "samples/s": row["train_samples_per_s"], "epoch s": median, "100 epochs s": 100 * median,
            "GPU %": sampler.mean(), "syncs/step": syncs / steps if device.startswith("cuda") else float("nan")}


def packed(runs: int, cache: Path, out: Path, epochs: int, device: str, size: int) -> float:
    """samples/s of `runs` joint runs trained at once on one device, each in its own process."""
    extra = [arg for key, value in settings(cache, epochs, device, size).items() for arg in ("--set", f"{key}={value}")]
    procs = [subprocess.Popen([sys.executable, "-m", "mmbench.cli", "run", "-m", "joint", "-d", "cremad",
                               "--seeds", str(100 + i), "--out", str(out / f"packed{runs}"), *extra],
                              stdout=subprocess.DEVNULL) for i in range(runs)]
    if any(p.wait() for p in procs):
        raise SystemExit(f"a packed run failed; rerun one by hand: mmbench run -m joint -d cremad {' '.join(extra)}")
    return float(read_runs(out / f"packed{runs}")["train_samples_per_s"].sum())


def cpu_figure() -> None:
    print("\nCPU, fixed work: the README run (joint, synthetic, seed 0), 2 epochs, after a warm-up run")
    with tempfile.TemporaryDirectory() as out:  # generates the dataset (cached in the process) and warms up
        engine.run(resolve("joint", "synthetic", 0, overrides={"epochs": 1, "num_threads": 1}), Path(out))
    for threads in (1, 2):
        with tempfile.TemporaryDirectory() as out:
            row = engine.run(resolve("joint", "synthetic", 0, overrides={"epochs": 2, "num_threads": threads}),
                             Path(out))
        print(f"  {threads} thread(s): {row['train_samples_per_s']:.0f} training samples/s, "
              f"{row['wall_s']:.1f} s for the run")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (the same path, to try it small)")
    parser.add_argument("--methods", default="joint,ogm-ge,opm,aug,arm")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--clips", type=int, default=CREMAD_TRAIN + CREMAD_TEST)
    parser.add_argument("--size", type=int, default=224, help="frame size of the cache and the model input")
    parser.add_argument("--pack", default="2,4", help="runs packed per GPU to measure ('' for none)")
    parser.add_argument("--keep", type=Path, help="keep the noise cache and the results here")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a run setting for every run, e.g. compile=default, drop_last=true, deterministic=false")
    args = parser.parse_args()
    EXTRA.update(parse_sets(args.set))
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device here: the GPU table needs one (see docs/performance.md); CPU figure only")
        cpu_figure()
        return
    work = args.keep or Path(tempfile.mkdtemp(prefix="mmbench-gpu-"))
    try:
        started = time.perf_counter()
        cache = write_noise_cache(work / "cache", args.clips, size=args.size)
        name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
        print(f"{name}, torch {torch.__version__}; {args.clips} clips of noise written in "
              f"{time.perf_counter() - started:.0f} s; {args.epochs} epochs per method")
        table = {m: one_method(m, cache, work / "results", args.epochs, args.device, args.size)
                 for m in args.methods.split(",")}
        print(pd.DataFrame(table).T.to_string(float_format=lambda v: f"{v:.1f}"))
        base = table.get("joint", {}).get("samples/s")
        for runs in [int(r) for r in args.pack.split(",") if r]:
            total = packed(runs, cache, work / "results", args.epochs, args.device, args.size)
            gain = f" ({total / base:.2f}x one run)" if base else ""
            print(f"joint, {runs} runs packed: {total:.0f} samples/s together{gain}")
        print(f"total {time.perf_counter() - started:.0f} s")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    cpu_figure()


if __name__ == "__main__":
    main()
