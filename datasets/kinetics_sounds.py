"""`kinetics-sounds`: the 31-class Kinetics-Sounds of OGM-GE / BalanceBenchmark / AMSS / AUG from disk.

There is no official release: every group downloads the Kinetics-400 clips of these classes
itself, so only the layouts are shared (docs/layouts.md, facts in docs/layouts.md): `ogm-ge`
(`name,10,label` lists, audio/<name>.npy fbank, visual/<name>/frame_000NN.jpg),
`balancebench` (space-separated lists, .pkl or .npy audio), `amss` (name-label csvs,
{train,test}_img/ and {train,test}_wav_pkl/), `raw` (video/<class>/<name>.mp4, decoded with
PyAV). Class ids are alphabetical indices of the Kinetics-400 names unless `class_file` says
otherwise; the group of a clip is its YouTube id.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Any

from mmbench.data import DataError
from mmbench.data.cache import BadClip, ClipSource, Scan
from mmbench.data.prepared import COMMON_CHOICES, COMMON_HELP, COMMON_PARAMS, PreparedDataset
from mmbench.registry import register_dataset

KS_CLASSES = (
    "blowing nose", "blowing out candles", "bowling", "chopping wood", "dribbling basketball", "laughing",
    "mowing lawn", "playing accordion", "playing bagpipes", "playing bass guitar", "playing clarinet",
    "playing drums", "playing guitar", "playing harmonica", "playing keyboard", "playing organ", "playing piano",
    "playing saxophone", "playing trombone", "playing trumpet", "playing violin", "playing xylophone",
    "ripping paper", "shoveling snow", "shuffling cards", "singing", "stomping grapes", "tap dancing",
    "tapping guitar", "tapping pen", "tickling",
)
LIST_FILES = {"ogm-ge": ("my_train.txt", "my_test.txt"), "balancebench": ("train.txt", "test.txt"),
              "amss": ("annotations/train.csv", "annotations/test.csv"), "raw": ("my_train.txt", "my_test.txt")}
TIME_SUFFIX = re.compile(r"(_\d+){1,2}$")


@register_dataset
class KineticsSounds(PreparedDataset):
    name = "kinetics-sounds"
    description = "Kinetics-Sounds (31 Kinetics-400 classes, ~17k 10-s clips) from disk; prepare once."
    citation = "Arandjelovic & Zisserman, Look, Listen and Learn, ICCV 2017"
    # 2: training crops drawn with torchvision's retries and central fallback (they were shrunk to fit)
    version = 2
    layouts = ("ogm-ge", "balancebench", "amss", "raw")
    default_frontend = "fbank"
    root_names = ("kinetics-sounds", "KineticSound", "kinetics_sounds", "KS")
    params = {**COMMON_PARAMS, "class_file": "", "frames": 3, "max_seconds": 12.0}
    help = {**COMMON_HELP, "class_file": "text file of class names, one per line in id order "
                                         "(default: the 31 names in alphabetical order)"}
    choices = {**COMMON_CHOICES, "layout": ("auto", *layouts)}
    defaults = {"epochs": 100, "batch_size": 64, "lr": 1e-3, "lr_step": 70, "lr_gamma": 0.1,
                "encoder": "resnet18", "eval_batch_size": 128}

    @classmethod
    def class_names(cls, params: dict[str, Any]) -> list[str]:
        if not params.get("class_file"):
            return list(KS_CLASSES)
        path = Path(params["class_file"]).expanduser()
        try:
            names = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
        except OSError:
            raise DataError(f"class_file={path}: cannot be read") from None
        if len(set(names)) != len(names) or not names:
            raise DataError(f"class_file={path}: needs one distinct class name per line")
        return names

    @classmethod
    def scan(cls, root: Path, params: dict[str, Any]) -> Scan:
        if not root.is_dir():
            raise DataError(f"--data-root {root}: no such folder (the Kinetics-Sounds folder; docs/layouts.md)")
        layout = params["layout"] if params["layout"] != "auto" else _detect(root)
        classes = cls.class_names(params)
        entries, split_files = _read_lists(root, layout, classes)
        media = _find_media(root, layout)
        if layout == "raw" and not entries:  # no lists: labels from the class folders
            entries = {name: (label, None) for name, (label, _) in media.items()}
        clips, bad = [], []
        for name in sorted(set(entries) | set(media)):
            if name not in entries:
                continue  # on disk but in no list: not part of this dataset's split
            label, split = entries[name]
            found = media.get(name)
            audio, video, frames = found[1] if found else (None, None, ())
            where = str(audio or video or root)
            if label not in classes:
                bad.append(BadClip(name, "bad-label", where, f"{name}: label {label!r} is not one of the "
                                   f"{len(classes)} classes"))
            elif found is None:
                bad.append(BadClip(name, "missing", split_files[0] if split_files else str(root),
                                   f"{name} is listed but has no media under {root}"))
            elif video is None and not frames:
                bad.append(BadClip(name, "audio-only", where, f"{where}: no frames for this clip"))
            elif audio is None and video is None:
                bad.append(BadClip(name, "visual-only", str(frames[0].parent), f"{frames[0].parent}: no audio"))
            else:
                clips.append(ClipSource(name, label, TIME_SUFFIX.sub("", name) or name, split, audio, video, frames))
        return Scan(layout, clips, bad, split_files)


def _detect(root: Path) -> str:
    if (root / "my_train.txt").is_file() and (root / "visual").is_dir():
        return "ogm-ge"
    if (root / "train.txt").is_file() and (root / "visual").is_dir():
        return "balancebench"
    if (root / "annotations" / "train.csv").is_file() and (root / "train_img").is_dir():
        return "amss"
    if (root / "video").is_dir():
        return "raw"
    raise DataError(f"{root}: no Kinetics-Sounds layout found: expected my_train.txt + visual/ (ogm-ge), "
                    "train.txt + visual/ (balancebench), annotations/ + train_img/ (amss) or video/ (raw); "
                    "see docs/layouts.md")


def _read_lists(root: Path, layout: str, classes: list[str]) -> tuple[dict[str, tuple[str, str | None]], list[str]]:
    """{name: (class name, train|test)} from the layout's two list files."""
    paths = [root / rel for rel in LIST_FILES[layout]]
    if not all(p.is_file() for p in paths):
        if layout == "raw":
            return {}, []
        missing = next(p for p in paths if not p.is_file())
        raise DataError(f"{missing}: missing; the {layout} layout needs {' and '.join(LIST_FILES[layout])}")
    entries: dict[str, tuple[str, str | None]] = {}
    for split, path in zip(("train", "test"), paths, strict=True):
        for name, label in parse_list(path):
            entries[name] = (_class_name(label, classes), split)
    return entries, [str(p) for p in paths]


def parse_list(path: Path) -> list[tuple[str, str]]:
    """(name, label) rows of `name,10,label`, space-separated `name ... label`, or a csv with a
    `youtube_id,label` header."""
    text = path.read_bytes().decode("utf-8-sig")
    if path.suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames or not {"youtube_id", "label"} <= set(reader.fieldnames):
            raise DataError(f"{path}: expected a header with youtube_id and label columns")
        return [(row["youtube_id"].strip(), row["label"].strip()) for row in reader if row["youtube_id"]]
    rows = []
    for line in text.splitlines():
        fields = [f.strip() for f in (line.split(",") if "," in line else line.split())]
        if len(fields) >= 2 and fields[0]:
            rows.append((fields[0], fields[-1]))
    return rows


def _class_name(label: str, classes: list[str]) -> str:
    if label.isdigit():
        return classes[int(label)] if int(label) < len(classes) else f"id {label}"
    return label


def _find_media(root: Path, layout: str) -> dict[str, tuple[str, tuple[Path | None, Path | None, tuple]]]:
    """{name: (class folder or "", (audio, video, frames))}."""
    found: dict[str, tuple[str, tuple]] = {}
    if layout == "raw":
        for video in sorted((root / "video").glob("*/*")):
            if video.suffix.lower() in (".mp4", ".mkv", ".webm", ".avi"):
                wav = root / "audio" / f"{video.stem}.wav"
                found[video.stem] = (video.parent.name, (wav if wav.is_file() else None, video, ()))
        return found
    pairs = ([(root / "audio", root / "visual")] if layout != "amss" else
             [(root / f"{s}_wav_pkl", root / f"{s}_img" / "Image-01-FPS") for s in ("train", "test")])
    for audio_dir, visual_dir in pairs:
        audio = {p.stem: p for p in sorted(audio_dir.glob("*")) if p.suffix in (".npy", ".pkl", ".wav", ".pt")}
        visual = {p.name: tuple(sorted(p.glob("*.jpg"))) for p in sorted(visual_dir.glob("*")) if p.is_dir()}
        for name in set(audio) | set(visual):
            found[name] = ("", (audio.get(name), None, visual.get(name, ())))
    return found
