"""Prepare throughput, cache read throughput vs per-item decoding, cache size per clip.

    python benchmarks/bench_cache.py [--clips 240] [--jobs 2] [--threads 1]

Writes a CREMA-D fixture in the OGM-GE layout (AudioWAV/*.wav 16 kHz + Image-01-FPS/<clip>/
NNNNN.jpg at 480x360), then measures:
  * `mmbench prepare`-equivalent throughput, clips/s with 1 process and with --jobs processes;
  * training-side reading: samples/s of batches from the cache (memory-mapped, batch-level
    RandomResizedCrop + flip + normalisation, the ogm-stft spectrogram already computed)
    against the way the OGM-GE / AUG loaders do it per item: read the WAV, resample to
    22,050 Hz, tile, STFT, open the JPEG with PIL, torchvision RandomResizedCrop + flip +
    ToTensor + Normalize, then collate;
  * cache bytes per clip.
Both reading paths run in this one process with `--threads` torch threads (per-core figures).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile
import torch
import torchaudio.functional as AF
from PIL import Image
from torchvision import transforms

from mmbench.config import resolve
from mmbench.data import cache, fixtures, media
from mmbench.registry import DATASETS
from mmbench.train.engine import tune_allocator


def per_item_loader(root: Path, clips: list[str], generator: torch.Generator) -> torch.Tensor:
    """One batch the way the original datasets' __getitem__ + default collate build it."""
    tf = transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(),
                             transforms.ToTensor(),
                             transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    stft = media.FRONTENDS["ogm-stft"]
    audio, visual = [], []
    for clip in clips:
        wave, rate = soundfile.read(root / "AudioWAV" / f"{clip}.wav", dtype="float32")
        wave = AF.resample(torch.from_numpy(wave), rate, stft.sample_rate).numpy()
        audio.append(torch.from_numpy(stft(wave)))
        frames = sorted((root / "Image-01-FPS" / clip).glob("*.jpg"))
        pick = frames[int(torch.randint(len(frames), (1,), generator=generator))]
        visual.append(tf(Image.open(pick).convert("RGB")))
    return torch.stack(audio)[:, None], torch.stack(visual)[:, None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=240)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tune_allocator()  # as every training run does

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "cremad"
        t0 = time.perf_counter()
        fixtures.write_fixture("cremad", "ogm-ge", root, clips=args.clips, seed=0)
        print(f"fixture: {args.clips} CREMA-D clips in the ogm-ge layout, written in {time.perf_counter() - t0:.1f} s")

        cls = DATASETS.get("cremad")
        params = resolve("joint", "cremad", overrides={"root": str(root), "cache": str(Path(tmp) / "c")}).data
        scan = cls.scan(root, params)
        prep = cls.preprocessing(params, scan)
        for jobs in sorted({1, args.jobs}):
            target = Path(tmp) / f"cache-{jobs}"
            t0 = time.perf_counter()
            prepared = cache.prepare(scan, prep, target, root, {}, jobs=jobs)
            seconds = time.perf_counter() - t0
            print(f"prepare, {jobs} process(es): {args.clips / seconds:7.1f} clips/s "
                  f"({args.clips / seconds / jobs:.1f} clips/s per core)")
        manifest = prepared.manifest
        per_clip = manifest["bytes"] / manifest["n_clips"]
        print(f"cache: {manifest['bytes'] / 2**20:.1f} MiB for {manifest['n_clips']} clips = {per_clip / 1024:.0f} KiB "
              f"per clip (audio {manifest['audio_shape']} float16, {manifest['n_frames'] / manifest['n_clips']:.1f} "
              f"frames of 3x{manifest['frame_size']}^2 uint8 per clip)")

        store = cache.CacheStore(target)
        y = torch.zeros(len(store.index), dtype=torch.long)
        split = cache.CachedSplit(store, np.arange(len(store.index)), y, frames=1)
        dataset = cls(resolve("joint", "cremad", overrides={"root": str(target)}))
        generator = torch.Generator().manual_seed(0)

        def cached_pass() -> float:
            seen, t0 = 0, time.perf_counter()
            for batch in split.batches(args.batch, generator):
                seen += len(dataset.transform(batch, train=True, generator=generator).y)
            return seen / (time.perf_counter() - t0)

        clips = store.index["clip"].tolist()[:256]

        def per_item_pass() -> float:
            t0 = time.perf_counter()
            for start in range(0, len(clips), args.batch):
                per_item_loader(root, clips[start:start + args.batch], generator)
            return len(clips) / (time.perf_counter() - t0)

        # Median of 3 passes each: single passes on a shared 2-core machine vary by up to 1.5x.
        cached_rate = statistics.median(cached_pass() for _ in range(3))
        item_rate = statistics.median(per_item_pass() for _ in range(3))
        print(f"read from cache (train transform, batch {args.batch}): {cached_rate:8.0f} samples/s (median, 3 passes)")
        print(f"per-item decoding (OGM-GE style):          {item_rate:8.0f} samples/s (median, 3 passes)")
        print(f"speed-up of the cache: {cached_rate / item_rate:.1f}x per sample with {args.threads} thread(s) "
              f"(target: at least 10x)")


if __name__ == "__main__":
    main()
