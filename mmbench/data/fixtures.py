"""Small synthetic datasets written in exactly the real on-disk layouts (docs/layouts.md).

Used by the tests and by `mmbench fixtures DATASET --layout L --out DIR` so users can check a
setup end to end before pointing it at the real data. Every clip carries its label in both
modalities, so a model can learn it: the audio is a sine tone whose frequency depends on the
class (300 + 150 * class id Hz) plus a little noise, and the frames are a solid colour with a
distinct hue per class plus noise and a small per-frame brightness change. Precomputed audio
features (fbank `.pt`/`.npy`, log-PSD `.pkl`) are fake but class-dependent in the same way: a
bright band at the tone's frequency bin. Everything is deterministic from the seed.

`write_bad_clips` adds the kinds of defective CREMA-D clips the real release has (Git LFS
pointer stubs, empty or silent files, a minute-long clip, ...).
"""

from __future__ import annotations

import colorsys
import csv
import io
import math
import pickle
import string
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import numpy as np

from mmbench.datasets.cremad import OGM_ORDER as CREMAD_EMOTIONS  # stat.csv line order
from mmbench.datasets.kinetics_sounds import KS_CLASSES  # alphabetical = OGM-GE ids

LAYOUTS: dict[str, tuple[str, ...]] = {
    "cremad": ("raw", "ogm-ge", "balancebench"),
    "kinetics-sounds": ("ogm-ge", "balancebench", "amss", "raw"),
}
BAD_KINDS = ("lfs_pointer", "empty_audio", "corrupt_video", "silent_short", "long_clip", "audio_only",
             "visual_only", "bad_label")

# CREMA-D facts (docs/layouts.md)
SENTENCES = ("IEO", "TIE", "IOM", "IWW", "TAI", "MTI", "IWL", "ITH", "DFA", "ITS", "TSI", "WSI")
CREMAD_ACTORS = (1001, 1002, 1003, 1004)
BAD_ACTOR = 1005
CREMAD_FPS = Fraction(30000, 1001)
CREMAD_SIZE = (480, 360)  # width, height
OGM_FRAME_STEP = 29  # OGM-GE truncates 29.97 fps to 29 and keeps frame 0 of every 29
KS_SIZE = (160, 120)
KS_FPS = 25
KS_RAW_SECONDS = 3.0
LFS_POINTER = ("version https://git-lfs.github.com/spec/v1\n"
               "oid sha256:{oid}\n"
               "size 72862\n")
FBANK_PAD = 4.503877 / (2 * 5.141276)  # a zero-padded fbank frame after the BalanceBenchmark normalisation
YTID_CHARS = string.ascii_letters + string.digits + "_-"
BAD_CLIP_IDS = {
    "lfs_pointer": f"{BAD_ACTOR}_DFA_ANG_XX",
    "empty_audio": f"{BAD_ACTOR}_IWW_NEU_XX",
    "corrupt_video": f"{BAD_ACTOR}_TAI_HAP_XX",
    "silent_short": f"{BAD_ACTOR}_MTI_SAD_XX",  # like the real 1076_MTI_SAD_XX
    "long_clip": f"{BAD_ACTOR}_IEO_DIS_MD",  # like the real minute-long 1064_IEO_DIS_MD
    "audio_only": f"{BAD_ACTOR}_TIE_FEA_XX",
    "visual_only": f"{BAD_ACTOR}_IOM_SAD_XX",
    "bad_label": f"{BAD_ACTOR}_DFA_XYZ_XX",
    "truncated": f"{BAD_ACTOR}_ITH_ANG_XX",
}
# Not a defect that skips the clip: its WAV (and FLV) are cut short, which decoders read without an
# error; `prepare` keeps it and lists it in truncated_clips.csv. Layouts with media files only.
TRUNCATED_LAYOUTS = ("raw", "ogm-ge")


# ----------------------------------------------------------------------------------------------
# public API


def write_fixture(dataset: str, layout: str, out: Path, clips: int = 24, seed: int = 0,
                  classes: int | None = None) -> Path:
    """Write `clips` synthetic clips of `dataset` in `layout` under `out` (created; must be empty
    or absent) and return `out`. `classes`: use the first `classes` class names (default: all 6
    for cremad, 4 for kinetics-sounds)."""
    if dataset not in LAYOUTS:
        raise ValueError(f"fixtures: unknown dataset {dataset!r}; known: {', '.join(LAYOUTS)}")
    if layout not in LAYOUTS[dataset]:
        raise ValueError(f"fixtures: unknown {dataset} layout {layout!r}; known: {', '.join(LAYOUTS[dataset])}")
    names = CREMAD_EMOTIONS if dataset == "cremad" else KS_CLASSES
    n_classes = (len(names) if dataset == "cremad" else 4) if classes is None else int(classes)
    if not 1 <= n_classes <= len(names):
        raise ValueError(f"fixtures: classes={classes}: {dataset} has 1 to {len(names)} classes")
    if clips < 1:
        raise ValueError(f"fixtures: clips={clips}: need at least 1 clip")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"fixtures: {out} exists and is not an empty folder; choose a new --out")
    out.mkdir(parents=True, exist_ok=True)
    labels = [i % n_classes for i in range(clips)]
    split = _split(labels, n_classes, seed)
    if dataset == "cremad":
        _write_cremad(out, layout, labels, split, seed, n_classes)
    else:
        _write_ks(out, layout, labels, split, seed, n_classes)
    return out


def write_bad_clips(dataset_root: Path, layout: str, kinds: Iterable[str]) -> dict[str, str]:
    """Add defective CREMA-D clips to a fixture written by `write_fixture("cremad", layout, ...)`;
    returns {kind: clip id}. Clips with both modalities (and bad_label) are appended to the
    layout's train.csv when it has one, keeping its line endings."""
    root = Path(dataset_root)
    if layout not in LAYOUTS["cremad"]:
        raise ValueError(f"fixtures: unknown cremad layout {layout!r}; known: {', '.join(LAYOUTS['cremad'])}")
    kinds = list(dict.fromkeys(kinds))
    unknown = [k for k in kinds if k not in (*BAD_KINDS, "truncated")]
    if unknown:
        raise ValueError(f"fixtures: unknown bad-clip kind(s) {', '.join(unknown)}; known: "
                         f"{', '.join(BAD_KINDS)}, truncated")
    if "truncated" in kinds and layout not in TRUNCATED_LAYOUTS:
        raise ValueError(f"fixtures: layout {layout} has no media file to truncate; use "
                         f"{' or '.join(TRUNCATED_LAYOUTS)}")
    if not root.is_dir():
        raise ValueError(f"fixtures: {root} is not a folder; write a cremad fixture there first")
    made: dict[str, str] = {}
    for number, kind in enumerate(kinds):
        clip = BAD_CLIP_IDS[kind]
        _write_bad_clip(root, layout, kind, clip, np.random.default_rng((1_000_003, number)))
        made[kind] = clip
    if layout == "raw":
        _add_demographics(root, [BAD_ACTOR])
    listed = [clip for kind, clip in made.items() if kind not in ("audio_only", "visual_only")]
    train_csv = {"ogm-ge": root / "annotations" / "train.csv", "balancebench": root / "train.csv"}.get(layout)
    if listed and train_csv is not None and train_csv.is_file():
        _append_rows(train_csv, [(clip, clip.split("_")[2]) for clip in listed])
    return made


# ----------------------------------------------------------------------------------------------
# splits and content


def _split(labels: list[int], n_classes: int, seed: int) -> list[str]:
    """~75 % train / 25 % test per class; a class with at least 2 clips is in both splits."""
    rng = np.random.default_rng((seed, 7))
    split = ["train"] * len(labels)
    for c in range(n_classes):
        members = [i for i, y in enumerate(labels) if y == c]
        if len(members) < 2:
            continue
        n_test = min(len(members) - 1, max(1, round(len(members) / 4)))
        for i in rng.permutation(members)[:n_test]:
            split[int(i)] = "test"
    return split


def _tone_hz(c: int) -> float:
    return 300.0 + 150.0 * c


def _tone(c: int, seconds: float, rate: int, rng: np.random.Generator, amplitude: float = 0.3) -> np.ndarray:
    n = int(round(seconds * rate))
    t = np.arange(n, dtype=np.float64) / rate
    wave = amplitude * np.sin(2 * np.pi * _tone_hz(c) * t + rng.uniform(0, 2 * np.pi))
    return (wave + 0.01 * rng.standard_normal(n)).astype(np.float32)


def _colour(c: int, n_classes: int) -> np.ndarray:
    r, g, b = colorsys.hsv_to_rgb(c / max(n_classes, 1), 0.75, 0.85)
    return np.array([r * 255, g * 255, b * 255], dtype=np.int16)


def _frame(c: int, n_classes: int, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) uint8 RGB: the class colour, a little brightness change, noise."""
    width, height = size
    base = (_colour(c, n_classes) * rng.uniform(0.9, 1.1)).astype(np.int16)
    noise = rng.integers(-12, 13, size=(height, width, 3), dtype=np.int16)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def _jpeg(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image, "RGB").save(path, format="JPEG", quality=90)


def _mel(f: float) -> float:
    return 1127.0 * math.log1p(f / 700.0)


def _fbank(c: int, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """A fake normalised Kaldi fbank (1024, 128) float32: background, a band at the tone's mel
    bin, frames after the clip's end at the zero-padding value (as after BalanceBenchmark's
    normalisation)."""
    bins = np.arange(128, dtype=np.float32)
    centre = (_mel(_tone_hz(c)) - _mel(20.0)) / (_mel(8000.0) - _mel(20.0)) * 129 - 1
    band = 0.9 * np.exp(-0.5 * ((bins - centre) / 1.5) ** 2)
    x = -0.55 + 0.05 * rng.standard_normal((1024, 128)) + band[None, :]
    frames = min(1024, int(seconds * 100))
    x[frames:] = FBANK_PAD
    return np.clip(x, -1, 1).astype(np.float32)


def _psd(c: int, rng: np.random.Generator) -> np.ndarray:
    """A fake per-clip z-scored log-PSD (257, 1004) float32 (22,050 Hz, nperseg 512) with a
    band at the tone's frequency bin."""
    bins = np.arange(257, dtype=np.float64)
    centre = _tone_hz(c) * 512 / 22050
    x = rng.standard_normal((257, 1004)) + 6.0 * np.exp(-0.5 * ((bins - centre) / 1.0) ** 2)[:, None]
    return ((x - x.mean()) / x.std()).astype(np.float32)


def _write_wav(path: Path, samples: np.ndarray, rate: int = 16000) -> None:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), samples, rate, subtype="PCM_16", format="WAV")


def _write_video(path: Path, fmt: str, video_codec: str, size: tuple[int, int], fps: Fraction | int,
                 frames: list[np.ndarray], n_frames: int, audio_codec: str | None, audio: np.ndarray | None,
                 rng: np.random.Generator, audio_rate: int = 44100) -> None:
    """Encode `n_frames` video frames (cycling `frames` at a few brightness levels) and an
    optional mono audio track with PyAV, packets interleaved by time."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    variants = []  # converted once: the rgb -> yuv conversion is the slow part
    for image in frames:
        for scale in rng.integers(60, 69, size=3):  # brightness x 0.94 .. 1.06, in 1/64 steps
            bright = np.minimum((image.astype(np.uint16) * int(scale)) >> 6, 255).astype(np.uint8)
            variants.append(av.VideoFrame.from_ndarray(bright, format="rgb24").reformat(format="yuv420p"))
    order = rng.permutation(len(variants))
    with av.open(str(path), "w", format=fmt) as container:
        vstream = container.add_stream(video_codec, rate=fps)
        vstream.width, vstream.height = size
        vstream.pix_fmt = "yuv420p"
        if video_codec == "libx264":
            vstream.options = {"preset": "ultrafast"}
        events: list[tuple[float, int, int]] = [(i / float(fps), 0, i) for i in range(n_frames)]
        astream, chunk = None, 1024
        if audio_codec is not None and audio is not None:
            astream = container.add_stream(audio_codec, rate=audio_rate, layout="mono")
            if audio_codec == "mp3":
                astream.options = {"compression_level": "9"}  # LAME's fastest
            chunk = astream.codec_context.frame_size or 1024
            events += [(start / audio_rate, 1, start) for start in range(0, len(audio), chunk)]
        for _, kind, value in sorted(events):
            if kind == 0:
                frame = variants[order[value % len(order)]]
                frame.pts = value
                container.mux(vstream.encode(frame))
            else:
                piece = audio[value:value + chunk]
                if len(piece) < chunk:
                    piece = np.pad(piece, (0, chunk - len(piece)))
                aframe = av.AudioFrame.from_ndarray(piece[None, :].astype(np.float32), format="fltp", layout="mono")
                aframe.sample_rate = audio_rate
                aframe.pts = value
                aframe.time_base = Fraction(1, audio_rate)
                container.mux(astream.encode(aframe))
        container.mux(vstream.encode(None))
        if astream is not None:
            container.mux(astream.encode(None))


def _mp4_codec() -> str:
    import av

    try:
        av.codec.Codec("libx264", "w")
        return "libx264"
    except Exception:  # noqa: BLE001 - any failure: fall back to the built-in encoder
        return "mpeg4"


def _write_lines(path: Path, lines: Iterable[str], newline: str, bom: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(line + newline for line in lines)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))


# ----------------------------------------------------------------------------------------------
# CREMA-D


def _cremad_names(labels: list[int]) -> list[str]:
    """Unique `<ActorID>_<Sentence>_<Emotion>_<Level>` names: round-robin over actors, then
    sentences (level XX; IEO at LO/MD/HI for the non-neutral emotions, as in the release), then
    further actors (1006.., skipping the bad-clip actor 1005) once the combinations run out."""
    seen: dict[int, int] = {}
    names = []
    for c in labels:
        k = seen.get(c, 0)
        seen[c] = k + 1
        emotion = CREMAD_EMOTIONS[c]
        variants = [(s, "XX") for s in SENTENCES[1:]]
        variants += [("IEO", "XX")] if emotion == "NEU" else [("IEO", level) for level in ("HI", "MD", "LO")]
        per_block = len(CREMAD_ACTORS) * len(variants)
        block, within = divmod(k, per_block)
        slot = (within + c) % len(CREMAD_ACTORS)  # offset by class: small fixtures still use every actor
        actor = CREMAD_ACTORS[slot] if not block else BAD_ACTOR + 1 + (block - 1) * len(CREMAD_ACTORS) + slot
        if actor > 1091:
            raise ValueError(f"fixtures: too many cremad clips for class {emotion}; use fewer --clips")
        sentence, level = variants[(within // len(CREMAD_ACTORS) + c) % len(variants)]
        names.append(f"{actor}_{sentence}_{emotion}_{level}")
    return names


def _write_cremad(out: Path, layout: str, labels: list[int], split: list[str], seed: int, n_classes: int) -> None:
    names = _cremad_names(labels)
    for i, (name, c) in enumerate(zip(names, labels, strict=True)):
        rng = np.random.default_rng((seed, i, 1))
        seconds = float(rng.uniform(1.5, 3.0))
        _write_cremad_clip(out, layout, name, c, n_classes, seconds, rng)
    rows = [(name, CREMAD_EMOTIONS[c]) for name, c in zip(names, labels, strict=True)]
    train = [r for r, s in zip(rows, split, strict=True) if s == "train"]
    test = [r for r, s in zip(rows, split, strict=True) if s == "test"]
    if layout == "raw":
        _add_demographics(out, sorted({int(name[:4]) for name in names}))
    elif layout == "ogm-ge":
        _write_lines(out / "annotations" / "train.csv", [f"{a},{b}" for a, b in train], "\r\n")
        _write_lines(out / "annotations" / "test.csv", [f"{a},{b}" for a, b in test], "\r\n")
        _write_lines(out / "annotations" / "stat.csv", CREMAD_EMOTIONS, "\r\n", bom=True)
    else:
        _write_lines(out / "train.csv", ["name,label", *(f"{a},{b}" for a, b in train)], "\n")
        _write_lines(out / "test.csv", ["name,label", *(f"{a},{b}" for a, b in test)], "\n")


def _write_cremad_clip(root: Path, layout: str, name: str, c: int, n_classes: int, seconds: float,
                       rng: np.random.Generator, audio: bool = True, visual: bool = True) -> None:
    if audio:
        if layout == "balancebench":
            _save_pt(root / "audio" / f"{name}.pt", _fbank(c, seconds, rng))
        else:
            _write_wav(root / "AudioWAV" / f"{name}.wav", _tone(c, seconds, 16000, rng))
    if not visual:
        return
    if layout == "raw":
        _write_flv(root / "VideoFlash" / f"{name}.flv", c, n_classes, seconds, rng)
    elif layout == "ogm-ge":
        n_frames = max(1, int(seconds * float(CREMAD_FPS)))
        for index in range(0, n_frames, OGM_FRAME_STEP):
            _jpeg(root / "Image-01-FPS" / name / f"{index:05d}.jpg", _frame(c, n_classes, CREMAD_SIZE, rng))
    else:
        for k in range(1, 11):
            _jpeg(root / "visual" / name / f"frame_{k:05d}.jpg", _frame(c, n_classes, CREMAD_SIZE, rng))


def _write_flv(path: Path, c: int, n_classes: int, seconds: float, rng: np.random.Generator,
               with_audio: bool = True, size: tuple[int, int] = CREMAD_SIZE, fps: Fraction | int = CREMAD_FPS) -> None:
    frames = [_frame(c, n_classes, size, rng) for _ in range(3)]
    n_frames = max(1, int(round(seconds * float(fps))))
    audio = _tone(c, seconds, 44100, rng) if with_audio else None
    _write_video(path, "flv", "flv", size, fps, frames, n_frames, "mp3" if with_audio else None, audio, rng)


def _save_pt(path: Path, array: np.ndarray) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(torch.from_numpy(np.ascontiguousarray(array)), path)


def _add_demographics(root: Path, actors: list[int]) -> None:
    """VideoDemographics.csv as released: quoted header and strings, bare numbers."""
    path = root / "VideoDemographics.csv"
    rows: dict[int, list] = {}
    if path.is_file():
        for row in list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"))))[1:]:
            if row:
                rows[int(row[0])] = [int(row[0]), int(row[1]), *row[2:]]
    for actor in actors:
        if actor not in rows:
            rng = np.random.default_rng((actor, 3))
            rows[actor] = [actor, int(rng.integers(20, 75)), ("Male", "Female")[int(rng.integers(2))],
                           ("Caucasian", "African American", "Asian", "Unknown")[int(rng.integers(4))],
                           ("Hispanic", "Not Hispanic")[int(rng.integers(2))]]
    buffer = io.StringIO()
    writer = csv.writer(buffer, quoting=csv.QUOTE_NONNUMERIC, lineterminator="\n")
    writer.writerow(["ActorID", "Age", "Sex", "Race", "Ethnicity"])
    writer.writerows(rows[a] for a in sorted(rows))
    path.write_text(buffer.getvalue(), encoding="utf-8")


def _append_rows(path: Path, rows: list[tuple[str, str]]) -> None:
    data = path.read_bytes()
    newline = "\r\n" if b"\r\n" in data else "\n"
    present = {line.split(",")[0] for line in data.decode("utf-8-sig").splitlines()}
    text = "".join(f"{a},{b}{newline}" for a, b in rows if a not in present)
    if data and not data.endswith(b"\n"):
        text = newline + text
    path.write_bytes(data + text.encode("utf-8"))


def _write_bad_clip(root: Path, layout: str, kind: str, clip: str, rng: np.random.Generator) -> None:
    emotion = clip.split("_")[2]
    c = CREMAD_EMOTIONS.index(emotion) if emotion in CREMAD_EMOTIONS else 0
    audio_path = root / ("audio" if layout == "balancebench" else "AudioWAV") / (
        f"{clip}.pt" if layout == "balancebench" else f"{clip}.wav")
    seconds = float(rng.uniform(1.5, 3.0))
    if kind == "lfs_pointer":
        _write_cremad_clip(root, layout, clip, c, len(CREMAD_EMOTIONS), seconds, rng, audio=False)
        audio_path.parent.mkdir(parents=True, exist_ok=True)
        audio_path.write_text(LFS_POINTER.format(oid=rng.bytes(32).hex()), encoding="ascii")
    elif kind == "empty_audio":
        _write_cremad_clip(root, layout, clip, c, len(CREMAD_EMOTIONS), seconds, rng, audio=False)
        audio_path.parent.mkdir(parents=True, exist_ok=True)
        audio_path.write_bytes(b"")
    elif kind == "corrupt_video":
        _write_cremad_clip(root, layout, clip, c, len(CREMAD_EMOTIONS), seconds, rng, visual=False)
        garbage = rng.bytes(4096)
        if layout == "raw":
            target = root / "VideoFlash" / f"{clip}.flv"
        elif layout == "ogm-ge":
            target = root / "Image-01-FPS" / clip / "00000.jpg"
        else:
            target = root / "visual" / clip / "frame_00001.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(garbage)
    elif kind == "silent_short":
        if layout == "raw":
            _write_flv(root / "VideoFlash" / f"{clip}.flv", c, len(CREMAD_EMOTIONS), 0.3, rng, with_audio=False)
            _write_wav(audio_path, np.zeros(0, dtype=np.float32))
        elif layout == "ogm-ge":
            _write_wav(audio_path, np.zeros(0, dtype=np.float32))
            _write_cremad_clip(root, layout, clip, c, len(CREMAD_EMOTIONS), 0.3, rng, audio=False)
        else:
            _save_pt(audio_path, np.full((1024, 128), FBANK_PAD, dtype=np.float32))
            _write_cremad_clip(root, layout, clip, c, len(CREMAD_EMOTIONS), 0.3, rng, audio=False)
    elif kind == "long_clip":
        if layout == "raw":
            _write_wav(audio_path, _tone(c, 60.0, 16000, rng))
            _write_flv(root / "VideoFlash" / f"{clip}.flv", c, len(CREMAD_EMOTIONS), 60.0, rng,
                       size=(160, 120), fps=5)
        else:
            _write_cremad_clip(root, layout, clip, c, len(CREMAD_EMOTIONS), 60.0, rng)
    elif kind == "audio_only":
        _write_cremad_clip(root, layout, clip, c, len(CREMAD_EMOTIONS), seconds, rng, visual=False)
    elif kind == "visual_only":
        _write_cremad_clip(root, layout, clip, c, len(CREMAD_EMOTIONS), seconds, rng, audio=False)
    elif kind == "truncated":  # a copy that stopped early: the headers still declare the whole clip
        _write_cremad_clip(root, layout, clip, c, len(CREMAD_EMOTIONS), seconds, rng)
        for path in (audio_path, root / "VideoFlash" / f"{clip}.flv"):
            if path.is_file():
                data = path.read_bytes()
                path.write_bytes(data[: len(data) // 2])
    else:  # bad_label: a tone/colour outside the classes, both modalities present
        _write_cremad_clip(root, layout, clip, len(CREMAD_EMOTIONS), len(CREMAD_EMOTIONS) + 1, seconds, rng)


# ----------------------------------------------------------------------------------------------
# Kinetics-Sounds


def _ks_names(split: list[str], seed: int) -> list[str]:
    """Train `<ytid>_<start:06d>_<end:06d>`, test `<ytid>_<start>`; distinct 11-character
    YouTube ids that never end in `_<digits>` (so the group id parses back)."""
    rng = np.random.default_rng((seed, 11))
    letters = string.ascii_letters + string.digits
    names, used = [], set()
    for s in split:
        while True:
            ytid = "".join(rng.choice(list(YTID_CHARS), 10)) + letters[int(rng.integers(len(letters)))]
            if ytid not in used:
                used.add(ytid)
                break
        start = int(rng.integers(0, 300))
        names.append(f"{ytid}_{start:06d}_{start + 10:06d}" if s == "train" else f"{ytid}_{start}")
    return names


def _write_ks(out: Path, layout: str, labels: list[int], split: list[str], seed: int, n_classes: int) -> None:
    names = _ks_names(split, seed)
    mp4 = _mp4_codec() if layout == "raw" else ""
    for i, (name, c, s) in enumerate(zip(names, labels, split, strict=True)):
        rng = np.random.default_rng((seed, i, 2))
        if layout == "ogm-ge":
            _save_npy(out / "audio" / f"{name}.npy", _fbank(c, 10.0, rng))
            for k in range(1, 11):
                _jpeg(out / "visual" / name / f"frame_{k:05d}.jpg", _frame(c, n_classes, KS_SIZE, rng))
        elif layout == "balancebench":
            _save_pickle(out / "audio" / f"{name}.pkl", _psd(c, rng))
            for k in range(1, 11):
                _jpeg(out / "visual" / name / f"frame_{k:05d}.jpg", _frame(c, n_classes, KS_SIZE, rng))
        elif layout == "amss":
            _save_pickle(out / f"{s}_wav_pkl" / f"{name}.pkl", _psd(c, rng))
            for k in range(3):
                _jpeg(out / f"{s}_img" / "Image-01-FPS" / name / f"{k * KS_FPS:05d}.jpg",
                      _frame(c, n_classes, KS_SIZE, rng))
        else:
            frames = [_frame(c, n_classes, KS_SIZE, rng) for _ in range(3)]
            _write_video(out / "video" / KS_CLASSES[c] / f"{name}.mp4", "mp4", mp4, KS_SIZE, KS_FPS, frames,
                         int(KS_RAW_SECONDS * KS_FPS), "aac", _tone(c, KS_RAW_SECONDS, 44100, rng), rng)
    rows = list(zip(names, labels, split, strict=True))
    if layout in ("ogm-ge", "raw"):
        for part, file in (("train", "my_train.txt"), ("test", "my_test.txt")):
            _write_lines(out / file, [f"{n},10,{c}" for n, c, s in rows if s == part], "\r\n")
    elif layout == "balancebench":
        for part in ("train", "test"):
            _write_lines(out / f"{part}.txt", [f"{n} 10 {c}" for n, c, s in rows if s == part], "\n")
    else:
        for part in ("train", "test"):
            buffer = io.StringIO()
            writer = csv.writer(buffer, lineterminator="\n")
            writer.writerow(["youtube_id", "label"])
            writer.writerows((n, KS_CLASSES[c]) for n, c, s in rows if s == part)
            path = out / "annotations" / f"{part}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(buffer.getvalue(), encoding="utf-8")


def _save_npy(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array)


def _save_pickle(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        pickle.dump(array, handle, protocol=4)
