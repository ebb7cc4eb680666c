"""The feature cache: decode every clip once (`mmbench prepare`), then train from memory-mapped arrays.

A prepared cache lives in `<cache>/<dataset>/<key>/`:
  manifest.json   written last; its presence means the cache is complete
  index.parquet   one row per usable clip: clip, label, group, split, frame_start, frame_count
  audio.npy       (N, F, T) float16 audio features
  frames.npy      (M, 3, S, S) uint8 candidate frames; clip i owns rows frame_start[i] : +frame_count[i]
  bad_clips.csv   clips that were skipped, and why
  truncated_clips.csv  clips kept although a file holds less than its header declares
  .work/          shards of a prepare that has not finished (kept for resuming, removed at the end)
`key` hashes the dataset, its preprocessing settings and the data root, so `mmbench run` finds
the cache from the same root without reading the raw data; `fingerprint` (in the manifest)
hashes the inputs (file names, sizes, labels, split) and the settings, so a second prepare of
unchanged inputs does nothing and a changed input is prepared again.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import pickle
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from mmbench.data import Batch, DataError, media

SHARD_SIZE = 32  # small enough to balance a few workers and to lose little on an interrupt
FEATURE_SUFFIXES = (".pt", ".npy", ".pkl")
CACHE_VERSION = 1


@dataclass(frozen=True)
class ClipSource:
    """Where one clip's media are: an audio file (waveform or stored features) and either a
    video file or a list of frame images."""

    clip: str
    label: str
    group: str
    split: str | None = None
    audio: Path | None = None
    video: Path | None = None
    frames: tuple[Path, ...] = ()


@dataclass(frozen=True)
class BadClip:
    clip: str
    problem: str  # lfs-pointer, unreadable, too-short, too-long, bad-label, audio-only, visual-only, shape
    path: str
    reason: str


@dataclass
class Scan:
    """What an adapter found under a root: usable clip sources and clips rejected already."""

    layout: str
    clips: list[ClipSource]
    bad: list[BadClip] = field(default_factory=list)
    split_files: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Preprocessing:
    frontend: str  # a key of media.FRONTENDS, or "stored" for precomputed feature files
    video_fps: float
    max_frames: int
    image_size: int
    min_seconds: float
    max_seconds: float


def cache_key(dataset: str, version: int, prep_params: dict[str, Any], root: Path) -> str:
    payload = {"dataset": dataset, "version": version, "cache": CACHE_VERSION, "params": prep_params,
               "root": str(root.expanduser().resolve())}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def default_cache_root() -> Path:
    return Path(os.environ.get("MMBENCH_CACHE") or Path.home() / ".cache" / "mmbench")


def fingerprint(scan: Scan, prep: Preprocessing, root: Path) -> str:
    digest = hashlib.sha256(json.dumps(asdict(prep), sort_keys=True).encode())
    for src in scan.clips:
        files = [p for p in (src.audio, src.video, *src.frames) if p is not None]
        # size and modification time: a file rewritten with other content of the same size changes the
        # fingerprint (and the cache is rebuilt) without reading every file
        sizes = ",".join(f"{_rel(p, root)}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)
        digest.update(f"{src.clip}|{src.label}|{src.group}|{src.split}|{sizes}\n".encode())
    for bad in scan.bad:
        digest.update(f"bad|{bad.clip}|{bad.problem}\n".encode())
    return digest.hexdigest()[:16]


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


# --- decoding one clip (runs in worker processes) ------------------------------------------

def decode_clip(src: ClipSource, prep: Preprocessing) -> tuple[np.ndarray, np.ndarray]:
    """(audio features (F, T) float16, candidate frames (K, 3, S, S) uint8); MediaError if unusable,
    its `path` the file at fault."""
    first_frame = src.frames[0] if src.frames else None
    try:
        frames = _decode_frames(src, prep)
    except media.MediaError as exc:
        exc.path = exc.path or src.video or first_frame
        raise
    try:
        return _decode_audio(src, prep), frames
    except media.MediaError as exc:
        exc.path = exc.path or src.audio or src.video
        raise


def _decode_audio(src: ClipSource, prep: Preprocessing) -> np.ndarray:
    path = src.audio or src.video
    if path is None:
        raise media.MediaError(f"{src.clip}: no audio")
    if path.suffix in FEATURE_SUFFIXES:
        features = media.load_feature_file(path)
    else:
        frontend = media.FRONTENDS[prep.frontend]
        wave = media.read_audio(path, frontend.sample_rate)
        _check_duration(path, len(wave) / frontend.sample_rate, prep, "audio")
        features = frontend(wave)
    if not np.isfinite(features).all() or np.abs(features).max() > 65000:
        raise media.MediaError(f"{path}: audio features are not finite or exceed float16 range", path)
    return features.astype(np.float16)


def _decode_frames(src: ClipSource, prep: Preprocessing) -> np.ndarray:
    if src.video is not None:
        _check_duration(src.video, media.media_duration(src.video), prep, "video")
        images = media.read_video_frames(src.video, per_second=prep.video_fps, max_seconds=prep.max_seconds)
    elif src.frames:
        images = [media.read_image(p) for p in _evenly(list(src.frames), prep.max_frames)]
    else:
        raise media.MediaError(f"{src.clip}: no video and no frames")
    images = _evenly(images, prep.max_frames)
    return np.stack([media.resize_frame(image, prep.image_size) for image in images])


def _check_duration(path: Path, seconds: float, prep: Preprocessing, what: str) -> None:
    if seconds < prep.min_seconds:
        raise media.MediaError(f"{path}: {what} lasts {seconds:.2f} s, under min_seconds={prep.min_seconds}", path)
    if seconds > prep.max_seconds:
        raise media.MediaError(f"{path}: {what} lasts {seconds:.1f} s, over max_seconds={prep.max_seconds}", path)


def _evenly(items: list, limit: int) -> list:
    """At most `limit` items, evenly spread (all of them when there are few enough)."""
    if len(items) <= limit:
        return items
    picks = np.linspace(0, len(items) - 1, limit).round().astype(int)
    return [items[i] for i in picks]


def _problem_of(reason: str) -> str:
    text = reason.lower()
    for needle, problem in (("lfs", "lfs-pointer"), ("under min_seconds", "too-short"),
                            ("over max_seconds", "too-long"), ("empty", "empty"), ("no audio", "no-audio")):
        if needle in text:
            return problem
    return "unreadable"


def _decode_job(job: tuple[int, ClipSource, Preprocessing]) -> tuple[int, Any]:
    index, src, prep = job
    try:
        audio, frames = decode_clip(src, prep)
        files = [p for p in dict.fromkeys((src.audio, src.video)) if p is not None and p.suffix not in FEATURE_SUFFIXES]
        cut = [BadClip(src.clip, "truncated", str(p), f"{p}: {reason}") for p in files
               if (reason := media.truncation(p)) is not None]
        return index, (audio, frames, cut)
    except media.MediaError as exc:
        return index, BadClip(src.clip, _problem_of(str(exc)), str(exc.path or src.audio or src.video or ""),
                              str(exc))
    except Exception as exc:  # a decoder crash on one clip must not stop the others
        return index, BadClip(src.clip, "unreadable", str(src.audio or src.video or ""),
                              f"{type(exc).__name__}: {exc}")


def _init_worker(parent: int) -> None:
    """A decoding worker: one thread, and it dies with `prepare` (kill -9 included) instead of writing
    shards beside a rerun's workers."""
    from mmbench.scheduler.worker import die_with_parent

    torch.set_num_threads(1)
    die_with_parent(parent)


# --- prepare ---------------------------------------------------------------------------------

@dataclass
class Prepared:
    path: Path
    manifest: dict[str, Any]
    reused: bool


ProgressFn = Callable[[int, int], None]


def prepare(scan: Scan, prep: Preprocessing, target: Path, root: Path, meta: dict[str, Any], jobs: int = 1,
            strict: bool = False, on_progress: ProgressFn | None = None) -> Prepared:
    """Decode every clip of `scan` into the cache at `target`; resumable and idempotent."""
    print_ = on_progress or (lambda done, total: None)
    if strict and scan.bad:
        raise DataError(_strict_message(scan.bad))
    fp = fingerprint(scan, prep, root)
    manifest = read_manifest(target)
    if manifest is not None and manifest.get("fingerprint") == fp:
        return Prepared(target, manifest, reused=True)
    if not scan.clips:
        raise DataError(f"{root}: no usable clips found ({len(scan.bad)} rejected; see the list above)")
    work = target / ".work"
    if _read_text(work / "fingerprint") != fp:
        shutil.rmtree(target, ignore_errors=True)  # stale: other inputs or settings
        work.mkdir(parents=True)
        (work / "fingerprint").write_text(fp)
    (target / "manifest.json").unlink(missing_ok=True)
    shards = [list(range(i, min(i + SHARD_SIZE, len(scan.clips)))) for i in range(0, len(scan.clips), SHARD_SIZE)]
    _decode_shards(scan, prep, work, shards, jobs, print_)
    bad, truncated = _consolidate(scan, work, target, len(shards), strict)
    manifest = {"cache_version": CACHE_VERSION, "fingerprint": fp, "root": str(root.resolve()),
                "layout": scan.layout, "split_files": scan.split_files, "preprocessing": asdict(prep),
                "n_bad": len(bad), "n_truncated": len(truncated), **meta}
    manifest.update(_array_meta(target))
    _write_atomic(target / "manifest.json", json.dumps(manifest, indent=2).encode())
    shutil.rmtree(work, ignore_errors=True)
    return Prepared(target, manifest, reused=False)


def _strict_message(bad: list[BadClip]) -> str:
    first = bad[0]
    return (f"{len(bad)} bad clip(s) and --strict: first {first.clip} ({first.problem}): {first.reason}; "
            "fix or remove them, or prepare without --strict to skip them")


def _decode_shards(scan: Scan, prep: Preprocessing, work: Path, shards: list[list[int]], jobs: int,
                   on_progress: ProgressFn) -> None:
    """Decode the shards not on disk yet. With several processes each worker decodes and writes
    whole shards, so no decoded array travels through a pipe."""
    total = len(scan.clips)
    pending = [k for k in range(len(shards)) if not (work / f"shard-{k:05d}.pkl").exists()]
    done = total - sum(len(shards[k]) for k in pending)
    on_progress(done, total)
    if not pending:
        return
    if jobs == 1:
        for k in pending:
            results = {}
            for i in shards[k]:
                index, results[i] = _decode_job((i, scan.clips[i], prep))
                done += 1
                on_progress(done, total)
            _write_shard(work, k, results)
        return
    tasks = [(k, [(i, scan.clips[i], prep) for i in shards[k]], work) for k in pending]
    pool = multiprocessing.get_context("spawn").Pool(jobs, initializer=_init_worker, initargs=(os.getpid(),))
    try:
        for count in pool.imap_unordered(_shard_job, tasks):
            done += count
            on_progress(done, total)
    finally:
        pool.terminate()
        pool.join()


def _shard_job(task: tuple[int, list[tuple[int, ClipSource, Preprocessing]], Path]) -> int:
    k, jobs, work = task
    _write_shard(work, k, dict(_decode_job(job) for job in jobs))
    return len(jobs)


def _write_shard(work: Path, k: int, results: dict[int, Any]) -> None:
    """The arrays, and beside them the little the first consolidation pass needs (written first:
    the .pkl marks the shard as done)."""
    meta = {str(i): None if isinstance(r, BadClip) else [list(r[0].shape), len(r[1]), r[1].shape[-1]]
            for i, r in results.items()}
    _write_atomic(work / f"shard-{k:05d}.json", json.dumps(meta).encode())
    _write_atomic(work / f"shard-{k:05d}.pkl", pickle.dumps(results, protocol=5))


def _consolidate(scan: Scan, work: Path, target: Path, n_shards: int, strict: bool
                 ) -> tuple[list[BadClip], list[BadClip]]:
    """Shards -> audio.npy, frames.npy, index.parquet, bad_clips.csv and truncated_clips.csv (clips kept
    although a file holds less than its header declares); two passes, one shard in memory."""
    bad, truncated = list(scan.bad), []
    shapes: Counter = Counter()
    frame_counts: dict[int, int] = {}
    size, failed = 0, 0
    for k in range(n_shards):
        for index, meta in json.loads((work / f"shard-{k:05d}.json").read_text()).items():
            if meta is None:
                failed += 1
            else:
                shapes[tuple(meta[0])] += 1
                frame_counts[int(index)] = meta[1]
                size = meta[2]
    if not shapes or (strict and (failed or len(shapes) > 1)):
        decoded_bad = [r for k in range(n_shards) for r in _load_shard(work, k).values() if isinstance(r, BadClip)]
        if strict and decoded_bad:
            raise DataError(_strict_message(decoded_bad))
        if not shapes:
            _write_bad(target, bad + decoded_bad)
            raise DataError(f"{target}: no clip could be decoded; the reasons are in {target / 'bad_clips.csv'}")
    audio_shape = shapes.most_common(1)[0][0]
    audio = np.lib.format.open_memmap(target / ".audio.npy", "w+", np.float16, (len(frame_counts), *audio_shape))
    frames = np.lib.format.open_memmap(target / ".frames.npy", "w+", np.uint8,
                                       (sum(frame_counts.values()), 3, size, size))
    rows, frame_at = [], 0
    for k in range(n_shards):
        for index, result in sorted(_load_shard(work, k).items()):
            if isinstance(result, BadClip):
                bad.append(result)
                continue
            src = scan.clips[index]
            if result[0].shape != audio_shape:
                bad.append(BadClip(src.clip, "shape", str(src.audio), f"{src.audio}: audio features have shape "
                                   f"{result[0].shape}, the other clips {audio_shape}"))
                continue
            truncated += result[2] if len(result) > 2 else []  # shards of an older prepare have no notes
            audio[len(rows)] = result[0]
            count = len(result[1])
            frames[frame_at:frame_at + count] = result[1]
            rows.append({"clip": src.clip, "label": src.label, "group": src.group, "split": src.split,
                         "frame_start": frame_at, "frame_count": count})
            frame_at += count
    if strict and len(bad) > len(scan.bad):
        raise DataError(_strict_message(bad[len(scan.bad):]))
    audio.flush()
    frames.flush()
    del audio, frames
    n = len(rows)
    _truncate_rows(target / ".audio.npy", target / "audio.npy", n)
    os.replace(target / ".frames.npy", target / "frames.npy")
    _write_atomic(target / "index.parquet", _parquet_bytes(pd.DataFrame(rows)))
    _write_bad(target, bad)
    _write_bad(target, truncated, "truncated_clips.csv")
    return bad, truncated


def _truncate_rows(src: Path, dst: Path, n: int) -> None:
    """Clips dropped in the shape check leave unused rows at the end of the audio array."""
    full = np.load(src, mmap_mode="r")
    if len(full) == n:
        del full
        os.replace(src, dst)
        return
    out = np.lib.format.open_memmap(dst, "w+", full.dtype, (n, *full.shape[1:]))
    out[:] = full[:n]
    out.flush()
    del out, full
    src.unlink()


def _load_shard(work: Path, k: int) -> dict[int, Any]:
    with open(work / f"shard-{k:05d}.pkl", "rb") as handle:
        return pickle.load(handle)


def _write_bad(target: Path, bad: list[BadClip], name: str = "bad_clips.csv") -> None:
    table = pd.DataFrame([asdict(b) for b in bad], columns=["clip", "problem", "path", "reason"])
    _write_atomic(target / name, table.to_csv(index=False).encode())


def _array_meta(target: Path) -> dict[str, Any]:
    audio = np.load(target / "audio.npy", mmap_mode="r")
    frames = np.load(target / "frames.npy", mmap_mode="r")
    return {"n_clips": int(audio.shape[0]), "audio_shape": list(audio.shape[1:]), "frame_size": int(frames.shape[-1]),
            "n_frames": int(frames.shape[0]),
            "bytes": sum((target / f).stat().st_size for f in ("audio.npy", "frames.npy", "index.parquet"))}


def _parquet_bytes(frame: pd.DataFrame) -> bytes:
    import io

    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # one temporary file per writer: never interleaved
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def read_manifest(target: Path) -> dict[str, Any] | None:
    try:
        return json.loads((target / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


# --- reading a prepared cache -----------------------------------------------------------------

class CacheStore:
    """A prepared cache, memory-mapped: nothing is read until a batch asks for it."""

    def __init__(self, path: Path) -> None:
        manifest = read_manifest(path)
        if manifest is None:
            raise DataError(f"{path}: not a prepared mmbench cache (no manifest.json); run `mmbench prepare` first")
        self.path = path
        self.manifest = manifest
        self.index = pd.read_parquet(path / "index.parquet")
        self.audio = np.load(path / "audio.npy", mmap_mode="r")
        self.frames = np.load(path / "frames.npy", mmap_mode="r")
        self.frame_start = torch.tensor(self.index["frame_start"].to_numpy(np.int64))
        self.frame_count = torch.tensor(self.index["frame_count"].to_numpy(np.int64))

    @property
    def nbytes(self) -> int:
        return int(self.audio.nbytes + self.frames.nbytes)

    @property
    def resident(self) -> bool:
        return isinstance(self.audio, torch.Tensor)

    def to_device(self, device: torch.device) -> None:
        """Read the arrays once into `device` memory; batches are then gathered there (`index_select`)
        instead of being copied out of the memory map by the host, one batch at a time."""
        self.audio = torch.from_numpy(np.array(self.audio)).to(device)  # a copy: the map is read-only
        self.frames = torch.from_numpy(np.array(self.frames)).to(device)


def pick_frames(count: torch.Tensor, frames: int, generator: torch.Generator | None) -> torch.Tensor:
    """(B, frames) frame numbers by segment sampling: each clip's candidates are cut into
    `frames` equal segments; training takes a random frame in each, evaluation the centre."""
    segment = count.double()[:, None] / frames
    k = torch.arange(frames, dtype=torch.float64)[None]
    offset = torch.rand(len(count), frames, generator=generator, dtype=torch.float64) if generator else 0.5
    picks = ((k + offset) * segment).floor().long()
    return torch.minimum(picks, (count - 1)[:, None])


class CachedSplit:
    """Rows of a `CacheStore` with labels; the `Split` the engine trains and evaluates on."""

    def __init__(self, store: CacheStore, rows: np.ndarray, y: torch.Tensor, frames: int) -> None:
        self.store, self.rows, self.y, self.frames = store, np.asarray(rows, dtype=np.int64), y, frames
        self.sample_id = store.index["clip"].iloc[self.rows].astype(str).tolist()
        self.group_id = store.index["group"].iloc[self.rows].astype(str).tolist()

    def __len__(self) -> int:
        return len(self.rows)

    def subset(self, rows: torch.Tensor) -> CachedSplit:
        picked = rows.numpy() if isinstance(rows, torch.Tensor) else np.asarray(rows)
        return CachedSplit(self.store, self.rows[picked], self.y[torch.as_tensor(picked)], self.frames)

    def batches(self, batch_size: int, generator: torch.Generator | None = None) -> Iterator[Batch]:
        """Shuffled with random frames when `generator` is given (training), else in order with
        the centre frames (evaluation)."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        for start in range(0, n, batch_size):
            yield self.take(order[start:start + batch_size], generator)

    def take(self, rows: torch.Tensor, generator: torch.Generator | None = None) -> Batch:
        """The batch of `rows` in this order, random frames when `generator` is given."""
        cache_rows = torch.from_numpy(self.rows[rows.numpy()])
        audio = _gather(self.store.audio, cache_rows)
        picks = pick_frames(self.store.frame_count[cache_rows], self.frames, generator)
        frame_rows = self.store.frame_start[cache_rows][:, None] + picks
        visual = _gather(self.store.frames, frame_rows.flatten()).view(len(rows), self.frames,
                                                                        *self.store.frames.shape[1:])
        return Batch(audio, visual, self.y[rows], rows)


def _gather(array: np.ndarray | torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """array[rows] as a tensor: one copy out of the memory map (the page cache after the first epoch), or
    a gather on the device that holds the array."""
    if isinstance(array, torch.Tensor):
        return array.index_select(0, rows.to(array.device, non_blocking=True))
    return torch.from_numpy(array[rows.numpy()])
