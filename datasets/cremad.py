"""`cremad`: CREMA-D from disk, in the official release layout or the papers' preprocessed ones.

Layouts (docs/layouts.md): `raw` (AudioWAV/*.wav + VideoFlash/*.flv,
frames picked by timestamp), `ogm-ge` (AudioWAV + Image-01-FPS/<clip>/NNNNN.jpg, split csvs
in annotations/ or the root), `balancebench` (audio/<clip>.pt|npy|pkl|wav + visual/<clip>/
frame_000NN.jpg). Labels come from the file name's emotion field; speakers are the actors.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mmbench.data import DataError
from mmbench.data.cache import BadClip, ClipSource, Scan
from mmbench.data.prepared import COMMON_CHOICES, COMMON_HELP, COMMON_PARAMS, PreparedDataset
from mmbench.registry import register_dataset

OGM_ORDER = ("NEU", "HAP", "SAD", "FEA", "DIS", "ANG")
CLIP_NAME = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})$")
AUDIO_SUFFIXES = (".wav", ".pt", ".npy", ".pkl")


@register_dataset
class CremaD(PreparedDataset):
    name = "cremad"
    description = "CREMA-D (91 actors, 6 emotions, 7,442 clips) from disk; prepare once with `mmbench prepare`."
    citation = "Cao et al., CREMA-D, IEEE Trans. Affective Computing 2014"
    # 2: training crops drawn with torchvision's retries and central fallback (they were shrunk to fit)
    version = 2
    layouts = ("raw", "ogm-ge", "balancebench")
    default_frontend = "ogm-stft"
    root_names = ("cremad", "CREMA-D", "crema-d", "CREMAD")
    params = {**COMMON_PARAMS, "split_dir": "", "class_order": "ogm", "frames": 1}
    location_params = ("root", "cache", "split_dir")
    help = {**COMMON_HELP,
            "split_dir": "folder with train.csv/test.csv (default: annotations/ or the root, where present)",
            "class_order": "ogm: NEU HAP SAD FEA DIS ANG (OGM-GE, AUG, BalanceBenchmark); sorted: ANG DIS FEA HAP "
                           "NEU SAD (MMPareto)"}
    choices = {**COMMON_CHOICES, "layout": ("auto", *layouts), "class_order": ("ogm", "sorted")}
    defaults = {"epochs": 100, "batch_size": 64, "lr": 1e-3, "lr_step": 70, "lr_gamma": 0.1,
                "encoder": "resnet18", "eval_batch_size": 128}

    @classmethod
    def class_names(cls, params: dict[str, Any]) -> list[str]:
        return sorted(OGM_ORDER) if params["class_order"] == "sorted" else list(OGM_ORDER)

    @classmethod
    def scan(cls, root: Path, params: dict[str, Any]) -> Scan:
        if not root.is_dir():
            raise DataError(f"--data-root {root}: no such folder (the CREMA-D folder with AudioWAV/ and VideoFlash/)")
        layout = params["layout"] if params["layout"] != "auto" else _detect(root)
        audio_dir, visual_dir = {"raw": ("AudioWAV", "VideoFlash"), "ogm-ge": ("AudioWAV", _image_dir(root)),
                                 "balancebench": ("audio", "visual")}[layout]
        for folder in (audio_dir, visual_dir):
            if not (root / folder).is_dir():
                raise DataError(f"{root / folder}: missing; the {layout} layout needs {audio_dir}/ and "
                                f"{visual_dir}/ (docs/layouts.md)")
        audio = _by_stem(root / audio_dir, AUDIO_SUFFIXES)
        if layout == "raw":
            visual = {p.stem: p for p in (root / visual_dir).iterdir() if p.suffix.lower() in (".flv", ".mp4")}
        else:
            visual = {p.name: p for p in (root / visual_dir).iterdir() if p.is_dir()}
        split_of, split_files = _read_splits(root, params)
        classes = set(cls.class_names(params))
        clips, bad = [], []
        for stem in sorted(set(audio) | set(visual)):
            match = CLIP_NAME.match(stem)
            path = str(audio.get(stem) or visual.get(stem))
            if match is None or match.group(3) not in classes:
                reason = (f"{path}: emotion {match.group(3)!r} is not a class ({', '.join(sorted(classes))})"
                          if match else f"{path}: name is not ActorID_Sentence_Emotion_Level")
                bad.append(BadClip(stem, "bad-label", path, reason))
            elif stem not in visual:
                bad.append(BadClip(stem, "audio-only", path, f"{path}: no video or frames for this clip"))
            elif stem not in audio:
                bad.append(BadClip(stem, "visual-only", path, f"{path}: no audio for this clip"))
            else:
                frames = () if layout == "raw" else tuple(sorted(p for p in visual[stem].glob("*.jpg")))
                if layout != "raw" and not frames:
                    bad.append(BadClip(stem, "visual-only", str(visual[stem]), f"{visual[stem]}: no frames"))
                    continue
                clips.append(ClipSource(stem, match.group(3), match.group(1), split_of.get(stem), audio[stem],
                                        visual[stem] if layout == "raw" else None, frames))
        listed = set(split_of) - set(audio) - set(visual)
        bad += [BadClip(s, "missing", split_files[0], f"{s} is in the split files but not on disk")
                for s in sorted(listed)]
        return Scan(layout, clips, bad, split_files)


def _detect(root: Path) -> str:
    if (root / "AudioWAV").is_dir() and (root / "VideoFlash").is_dir():
        return "raw"
    if (root / "AudioWAV").is_dir() and (root / _image_dir(root)).is_dir():
        return "ogm-ge"
    if (root / "audio").is_dir() and (root / "visual").is_dir():
        return "balancebench"
    raise DataError(f"{root}: no CREMA-D layout found: expected AudioWAV/ with VideoFlash/ or Image-01-FPS/, "
                    "or audio/ with visual/ (docs/layouts.md)")


def _image_dir(root: Path) -> str:
    found = sorted(p.name for p in root.glob("Image-*-FPS") if p.is_dir())
    return found[0] if found else "Image-01-FPS"


def _by_stem(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in suffixes and not path.name.startswith("."):
            files.setdefault(path.stem, path)  # .wav before .pt etc. only by sort order; one per stem
    return files


def _read_splits(root: Path, params: dict[str, Any]) -> tuple[dict[str, str], list[str]]:
    """{clip: train|test} from train.csv/test.csv (OGM-GE rows `clip,EMO`; BOM, CRLF and a
    `name,label` header tolerated)."""
    folders = [Path(params["split_dir"]).expanduser()] if params.get("split_dir") else [root / "annotations", root]
    for folder in folders:
        train, test = folder / "train.csv", folder / "test.csv"
        if train.is_file() and test.is_file():
            split_of = {clip: "train" for clip in read_clip_list(train)}
            split_of.update({clip: "test" for clip in read_clip_list(test)})
            return split_of, [str(train), str(test)]
        if params.get("split_dir"):
            raise DataError(f"split_dir={folder}: expected train.csv and test.csv there")
    return {}, []


def read_clip_list(path: Path) -> list[str]:
    text = path.read_bytes().decode("utf-8-sig")
    clips = []
    for number, line in enumerate(text.splitlines()):
        fields = [f.strip() for f in line.split(",")]
        if not fields[0] or (number == 0 and fields[0].lower() in ("name", "clip", "filename")):
            continue
        clips.append(fields[0])
    return clips
