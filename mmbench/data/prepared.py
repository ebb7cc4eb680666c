"""Base class of datasets read from the user's disk through the feature cache.

An adapter (datasets/cremad.py, datasets/kinetics_sounds.py) only says how to find clips
under a root (`scan`); preparing, locating the cache, splitting, batching and augmentation
are shared here. Settings split in three: where the data is (`root`, `cache`; not part of
the run_id), how clips are decoded into the cache (`PREPARE_PARAMS`; part of the cache key
and of the run_id), and how the cache is read in training (frames, image size, split).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from mmbench.config import ConfigError, RunConfig
from mmbench.data import Batch, DataError, Dataset, Splits, cache, carve_validation, media
from mmbench.data.augment import frames_to_model_input

PREPARE_PARAMS = ("layout", "audio_frontend", "video_fps", "max_frames", "cache_image_size",
                  "min_seconds", "max_seconds")

COMMON_PARAMS: dict[str, Any] = {
    "root": "", "cache": "",
    "layout": "auto", "audio_frontend": "auto", "video_fps": 1.0, "max_frames": 10,
    "cache_image_size": 224, "min_seconds": 0.5, "max_seconds": 10.0,
    "frames": 1, "image_size": 224, "split": "auto", "test_fraction": 0.1,
}

COMMON_HELP = {
    "root": "the dataset folder (else MMBENCH_DATA); not part of the run_id",
    "cache": "where prepared caches live (else MMBENCH_CACHE, else ~/.cache/mmbench); not part of the run_id",
    "layout": "on-disk layout (docs/layouts.md); auto detects it",
    "audio_frontend": "ogm-stft (3 s, 257x188), aug-stft (20 s, 257x1250), aug-ks-stft (AUG's KS: 35.4 kHz "
                      "10 s, 257x1003), fbank (Kaldi 1024x128), psd "
                      "(257x1004), stored (precomputed files); auto = stored files if the layout has them, "
                      "else the dataset's default",
    "video_fps": "candidate frames per second decoded from videos",
    "max_frames": "most candidate frames kept per clip (evenly spread)",
    "cache_image_size": "frames are stored squashed to this square size (as Resize((s, s)))",
    "min_seconds": "clips whose audio is shorter are skipped as defective",
    "max_seconds": "clips longer than this are skipped as defective",
    "frames": "frames per clip given to the model (segment sampling: random in training, centre at test)",
    "image_size": "model input size (RandomResizedCrop in training, resize at test)",
    "split": "files (the published split files), stratified, speaker (group-disjoint); auto = files if present",
    "test_fraction": "test share for split=stratified or speaker",
}

COMMON_CHOICES = {
    "audio_frontend": ("auto", "stored", *media.FRONTENDS),
    "split": ("auto", "files", "stratified", "speaker"),
}


#: A cache is held on the GPU when it takes at most this share of the memory free there when a run starts
#: (the rest is for training, and for the other runs packed on the same GPU).
RESIDENT_SHARE = 0.5


class PreparedDataset(Dataset):
    """A dataset on disk: `mmbench prepare` fills the cache, runs read only the cache."""

    location_params = ("root", "cache")
    #: Layout names this adapter reads, in auto-detection order.
    layouts: ClassVar[tuple[str, ...]] = ()
    #: Front-end used for waveforms when audio_frontend=auto.
    default_frontend: ClassVar[str] = "ogm-stft"
    #: Folder names under MMBENCH_DATA that hold this dataset.
    root_names: ClassVar[tuple[str, ...]] = ()
    #: Version of what `mmbench prepare` writes (it keys the cache). `version` keys the runs: a change of
    #: the training input alone (the augmentation) bumps that one and keeps every prepared cache.
    prepared_version: ClassVar[int] = 1

    def __init__(self, cfg: RunConfig) -> None:
        super().__init__(cfg)
        self._store: cache.CacheStore | None = None

    # --- what an adapter provides ----------------------------------------------------------
    @classmethod
    def scan(cls, root: Path, params: dict[str, Any]) -> cache.Scan:
        """Find every clip under `root`; clips that cannot be used go to `Scan.bad`."""
        raise NotImplementedError

    @classmethod
    def class_names(cls, params: dict[str, Any]) -> list[str]:
        raise NotImplementedError

    @property
    def classes(self) -> list[str]:
        return self.class_names(self.p)

    # --- settings -----------------------------------------------------------------------------
    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        p = cfg.data
        if p["layout"] not in ("auto", *cls.layouts):
            raise ConfigError(f"layout={p['layout']!r} is not allowed; choices: auto, {', '.join(cls.layouts)}")
        for key, low in (("frames", 1), ("image_size", 8), ("max_frames", 1), ("cache_image_size", 8)):
            if p[key] < low:
                raise ConfigError(f"{key}={p[key]}: must be at least {low}")
        if not 0 < p["test_fraction"] < 1:
            raise ConfigError(f"test_fraction={p['test_fraction']}: must be between 0 and 1")
        if p["video_fps"] <= 0 or p["max_seconds"] <= p["min_seconds"]:
            raise ConfigError("video_fps must be positive and max_seconds above min_seconds")

    @classmethod
    def prepare_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        return {k: params[k] for k in PREPARE_PARAMS}

    @classmethod
    def data_root(cls, params: dict[str, Any]) -> Path:
        if params.get("root"):
            return Path(params["root"]).expanduser()
        env = os.environ.get("MMBENCH_DATA")
        if not env:
            raise DataError(
                f"{cls.name}: no data location: pass --data-root DIR (the dataset folder), set MMBENCH_DATA, "
                f"or set data.root in the config; see docs/layouts.md")
        for name in cls.root_names:
            if (Path(env) / name).is_dir():
                return Path(env) / name
        return Path(env)

    @classmethod
    def cache_dir(cls, params: dict[str, Any], root: Path) -> Path:
        base = Path(params["cache"]).expanduser() if params.get("cache") else cache.default_cache_root()
        return base / cls.name / cache.cache_key(cls.name, cls.prepared_version, cls.prepare_params(params), root)

    @classmethod
    def preprocessing(cls, params: dict[str, Any], scan: cache.Scan) -> cache.Preprocessing:
        stored = [c.audio for c in scan.clips if c.audio is not None and c.audio.suffix in cache.FEATURE_SUFFIXES]
        frontend = params["audio_frontend"]
        if frontend == "auto":
            frontend = "stored" if stored else cls.default_frontend
        if frontend == "stored" and len(stored) < len(scan.clips):
            raise DataError(f"audio_frontend=stored: the {scan.layout} layout has waveforms, not precomputed "
                            "features; use audio_frontend=auto or a front-end name")
        if frontend != "stored" and stored:
            raise DataError(f"audio_frontend={frontend}: {stored[0].parent} holds precomputed features "
                            f"({stored[0].suffix}), which cannot be re-processed; use audio_frontend=auto")
        return cache.Preprocessing(frontend=frontend, video_fps=params["video_fps"], max_frames=params["max_frames"],
                                   image_size=params["cache_image_size"], min_seconds=params["min_seconds"],
                                   max_seconds=params["max_seconds"])

    # --- training-time reading --------------------------------------------------------------
    def locate(self) -> Path:
        root = self.data_root(self.p)
        if (root / "manifest.json").is_file():
            return root  # a prepared cache given directly
        target = self.cache_dir(self.p, root)
        if not (target / "manifest.json").is_file():
            settings = [f" --set {k}={self.p[k]}" for k in PREPARE_PARAMS if self.p[k] != type(self).params[k]]
            cache_opt = f" --cache {self.p['cache']}" if self.p.get("cache") else ""
            raise DataError(
                f"{self.name} is not prepared for {root} (looked for {target}/manifest.json); "
                f"run: mmbench prepare {self.name} --data-root {root}{cache_opt}{''.join(settings)}")
        return target

    def store(self) -> cache.CacheStore:
        if self._store is None:
            self._store = cache.CacheStore(self.locate())
        return self._store

    def load(self) -> Splits:
        store = self.store()
        lookup = {name: i for i, name in enumerate(self.classes)}
        labels = store.index["label"].astype(str)
        known = np.flatnonzero(labels.map(lambda name: name in lookup).to_numpy())
        if len(known) == 0:
            raise DataError(f"{store.path}: no clip has a label in the class list ({', '.join(self.classes)})")
        y = torch.tensor([lookup[name] for name in labels.iloc[known]], dtype=torch.long)
        everything = cache.CachedSplit(store, known, y, self.p["frames"])
        mode = self.p["split"]
        if mode == "auto":
            mode = "files" if store.manifest.get("split_files") else "stratified"
        if mode == "files":
            train, test = self._split_from_files(everything, store)
        else:
            train, test = carve_validation(everything, self.p["test_fraction"], self.cfg.split_seed,
                                           by_group=mode == "speaker")
        # Validation always comes out of train (never select on test).
        train, val = carve_validation(train, self.cfg.val_fraction, self.cfg.split_seed, by_group=mode == "speaker")
        if min(len(train), len(val), len(test)) == 0:
            raise DataError(f"{store.path}: {len(everything)} clips leave {len(train)} train, {len(val)} validation "
                            f"and {len(test)} test clips (split={mode}); use more clips or other fractions")
        return Splits(train=train, val=val, test=test)

    def _split_from_files(self, everything: cache.CachedSplit, store: cache.CacheStore
                          ) -> tuple[cache.CachedSplit, cache.CachedSplit]:
        if not store.manifest.get("split_files"):
            raise DataError(f"split=files: {store.manifest.get('root')} has no split files; "
                            "use split=stratified or split=speaker")
        split = store.index["split"].iloc[everything.rows].to_numpy()
        train = everything.subset(torch.from_numpy(np.flatnonzero(split == "train")))
        test = everything.subset(torch.from_numpy(np.flatnonzero(split == "test")))
        if len(train) == 0 or len(test) == 0:
            raise DataError(f"split=files: the split files of {store.manifest.get('root')} leave "
                            f"{len(train)} train and {len(test)} test clips in the cache")
        return train, test

    def place(self, device: torch.device) -> bool:
        """On a GPU with room for the whole cache (CREMA-D at 224 x 224: 3.5 GiB), hold it there."""
        if device.type != "cuda":
            return False  # the CPU reads the memory map directly
        free, _ = torch.cuda.mem_get_info(device)
        if self.store().nbytes <= RESIDENT_SHARE * free:
            self.store().to_device(device)
        return self.store().resident

    def transform(self, batch: Batch, train: bool, generator: torch.Generator) -> Batch:
        audio = batch.audio.float().unsqueeze(1)
        visual = frames_to_model_input(batch.visual, self.p["image_size"], train, generator)
        return Batch(audio, visual, batch.y, batch.index)

    def provenance(self) -> dict[str, Any]:
        manifest = self.store().manifest
        return {"data_cache": str(self.store().path), "data_fingerprint": manifest["fingerprint"],
                "data_layout_used": manifest["layout"], "data_frontend_used": manifest["preprocessing"]["frontend"],
                "data_audio_shape": "x".join(map(str, manifest["audio_shape"])),
                "data_bad_clips": manifest["n_bad"], "data_cached_clips": manifest["n_clips"],
                "data_on_device": self.store().resident}


def check_not_lfs(scan: cache.Scan, sample: int = 3) -> None:
    """A download without Git LFS gives ~130-byte pointer files instead of media: say so at once
    rather than rejecting every clip one by one."""
    files = [p for clip in scan.clips[:sample] for p in (clip.audio, clip.video) if p is not None]
    if files and all(media.is_lfs_pointer(p) for p in files):
        raise DataError(f"{files[0]} is a Git LFS pointer, not media: the dataset was cloned or downloaded "
                        "without Git LFS; run `git lfs pull` in it (or download the media) and prepare again")
