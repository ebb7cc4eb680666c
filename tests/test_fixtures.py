"""`mmbench.data.fixtures`: every dataset/layout is written with the exact names and formats of
docs/layouts.md (DATA.md), split stratified and deterministic, bad clips as claimed."""

from __future__ import annotations

import csv
import io
import pickle
import re
from pathlib import Path

import numpy as np
import pytest

from mmbench.data.fixtures import BAD_KINDS, CREMAD_EMOTIONS, KS_CLASSES, LAYOUTS, write_bad_clips, write_fixture

CASES = [(dataset, layout) for dataset, layouts in LAYOUTS.items() for layout in layouts]
IDS = [f"{d}-{layout}" for d, layout in CASES]
CLIPS = 12
CREMAD_NAME = re.compile(r"^(10\d\d)_([A-Z]{3})_([A-Z]{3})_(XX|LO|MD|HI)$")
KS_TRAIN = re.compile(r"^[A-Za-z0-9_-]{11}_\d{6}_\d{6}$")
KS_TEST = re.compile(r"^[A-Za-z0-9_-]{11}_\d+$")
SENTENCES = {"IEO", "TIE", "IOM", "IWW", "TAI", "MTI", "IWL", "ITH", "DFA", "ITS", "TSI", "WSI"}
BOM = b"\xef\xbb\xbf"


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    cache: dict[tuple[str, str], Path] = {}

    def get(dataset: str, layout: str) -> Path:
        if (dataset, layout) not in cache:
            out = tmp_path_factory.mktemp("fixtures") / f"{dataset}-{layout}"
            assert write_fixture(dataset, layout, out, clips=CLIPS, seed=0) == out
            cache[dataset, layout] = out
        return cache[dataset, layout]

    return get


# ----------------------------------------------------------------------------------------------
# readers: {name: (label, split)} per layout


def _crlf_lines(path: Path, bom: bool = False) -> list[str]:
    data = path.read_bytes()
    assert data.startswith(BOM) == bom, path
    text = data[len(BOM):].decode("utf-8") if bom else data.decode("utf-8")
    assert text.endswith("\r\n") and text.count("\n") == text.count("\r\n"), f"{path}: not CRLF"
    return text[:-2].split("\r\n")


def _lf_lines(path: Path) -> list[str]:
    data = path.read_bytes()
    assert not data.startswith(BOM) and b"\r" not in data and data.endswith(b"\n"), path
    return data.decode("utf-8")[:-1].split("\n")


def read_split(dataset: str, layout: str, root: Path) -> dict[str, tuple[object, str]]:
    rows: dict[str, tuple[object, str]] = {}
    for split in ("train", "test"):
        if dataset == "cremad" and layout == "raw":
            return {}
        if dataset == "cremad" and layout == "ogm-ge":
            for line in _crlf_lines(root / "annotations" / f"{split}.csv"):
                name, emo = line.split(",")
                rows[name] = (emo, split)
        elif dataset == "cremad":
            lines = _lf_lines(root / f"{split}.csv")
            assert lines[0] == "name,label"
            for line in lines[1:]:
                name, emo = line.split(",")
                rows[name] = (emo, split)
        elif layout in ("ogm-ge", "raw"):
            for line in _crlf_lines(root / f"my_{split}.txt"):
                name, seconds, label = line.split(",")
                assert seconds == "10" and label.isdigit()
                rows[name] = (int(label), split)
        elif layout == "balancebench":
            for line in _lf_lines(root / f"{split}.txt"):
                name, seconds, label = line.split(" ")
                assert seconds == "10" and label.isdigit()
                rows[name] = (int(label), split)
        else:
            text = (root / "annotations" / f"{split}.csv").read_text(encoding="utf-8")
            reader = csv.DictReader(io.StringIO(text))
            assert reader.fieldnames == ["youtube_id", "label"]
            for row in reader:
                assert row["label"] in KS_CLASSES
                rows[row["youtube_id"]] = (KS_CLASSES.index(row["label"]), split)
    return rows


def _rgb_jpeg(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        assert image.format == "JPEG" and image.mode == "RGB", path
        if size is not None:
            assert image.size == size, path
        return np.asarray(image)


def _streams(path: Path) -> dict[str, object]:
    import av

    with av.open(str(path)) as container:
        return {s.type: s.codec_context for s in container.streams if s.type in ("video", "audio")}


# ----------------------------------------------------------------------------------------------
# tests


def test_constants():
    assert CREMAD_EMOTIONS == ("NEU", "HAP", "SAD", "FEA", "DIS", "ANG")
    assert len(KS_CLASSES) == 31 and list(KS_CLASSES) == sorted(set(KS_CLASSES))
    assert KS_CLASSES[0] == "blowing nose" and KS_CLASSES[4] == "dribbling basketball"
    assert KS_CLASSES[13] == "playing harmonica" and KS_CLASSES[30] == "tickling"
    assert LAYOUTS == {"cremad": ("raw", "ogm-ge", "balancebench"),
                       "kinetics-sounds": ("ogm-ge", "balancebench", "amss", "raw")}


@pytest.mark.parametrize(("dataset", "layout"), CASES, ids=IDS)
def test_layout_files(dataset, layout, written):
    root = written(dataset, layout)
    if dataset == "cremad":
        _check_cremad(layout, root)
    else:
        _check_ks(layout, root)


def _cremad_clips(root: Path, layout: str) -> list[str]:
    folder = {"raw": "AudioWAV", "ogm-ge": "AudioWAV", "balancebench": "audio"}[layout]
    return sorted(p.stem for p in (root / folder).iterdir())


def _check_cremad(layout: str, root: Path) -> None:
    import soundfile as sf
    import torch

    clips = _cremad_clips(root, layout)
    assert len(clips) == CLIPS
    for clip in clips:
        match = CREMAD_NAME.match(clip)
        assert match and 1001 <= int(match[1]) <= 1004 and match[2] in SENTENCES and match[3] in CREMAD_EMOTIONS
    assert {c.split("_")[2] for c in clips} == set(CREMAD_EMOTIONS)
    if layout in ("raw", "ogm-ge"):
        assert sorted(p.name for p in (root / "AudioWAV").iterdir()) == [f"{c}.wav" for c in clips]
        for clip in clips:
            info = sf.info(str(root / "AudioWAV" / f"{clip}.wav"))
            assert (info.format, info.samplerate, info.channels, info.subtype) == ("WAV", 16000, 1, "PCM_16")
            assert 1.5 <= info.duration <= 3.0
    if layout == "raw":
        assert sorted(p.name for p in root.iterdir()) == ["AudioWAV", "VideoDemographics.csv", "VideoFlash"]
        assert sorted(p.name for p in (root / "VideoFlash").iterdir()) == [f"{c}.flv" for c in clips]
        for clip in clips[:3]:
            streams = _streams(root / "VideoFlash" / f"{clip}.flv")
            video, audio = streams["video"], streams["audio"]
            assert (video.name, video.width, video.height, video.format.name) == ("flv", 480, 360, "yuv420p")
            assert audio.name.startswith("mp3") and audio.sample_rate == 44100 and audio.layout.nb_channels == 1
        lines = (root / "VideoDemographics.csv").read_text(encoding="utf-8").splitlines()
        assert lines[0] == '"ActorID","Age","Sex","Race","Ethnicity"'
        assert [line.split(",")[0] for line in lines[1:]] == ["1001", "1002", "1003", "1004"]
        assert re.match(r'^1001,\d\d,"(Male|Female)","[A-Za-z ]+","(Hispanic|Not Hispanic)"$', lines[1])
        return
    if layout == "ogm-ge":
        assert sorted(p.name for p in root.iterdir()) == ["AudioWAV", "Image-01-FPS", "annotations"]
        assert sorted(p.name for p in (root / "annotations").iterdir()) == ["stat.csv", "test.csv", "train.csv"]
        assert _crlf_lines(root / "annotations" / "stat.csv", bom=True) == list(CREMAD_EMOTIONS)
        for clip in clips:
            frames = sorted(p.name for p in (root / "Image-01-FPS" / clip).iterdir())
            seconds = sf.info(str(root / "AudioWAV" / f"{clip}.wav")).duration
            assert frames == [f"{29 * i:05d}.jpg" for i in range(len(frames))]  # frames 0, 29, 58, ...
            assert abs(len(frames) - seconds * 30000 / 1001 / 29) <= 1 and 2 <= len(frames) <= 4
        _rgb_jpeg(root / "Image-01-FPS" / clips[0] / "00029.jpg", (480, 360))
    else:
        assert sorted(p.name for p in root.iterdir()) == ["audio", "test.csv", "train.csv", "visual"]
        for clip in clips:
            x = torch.load(root / "audio" / f"{clip}.pt")
            assert isinstance(x, torch.Tensor) and x.dtype == torch.float32 and tuple(x.shape) == (1024, 128)
            assert float(x.min()) >= -1 and float(x.max()) <= 1
            frames = sorted(p.name for p in (root / "visual" / clip).iterdir())
            assert frames == [f"frame_{k:05d}.jpg" for k in range(1, 11)]
        _rgb_jpeg(root / "visual" / clips[0] / "frame_00010.jpg", (480, 360))


def _check_ks(layout: str, root: Path) -> None:
    rows = read_split("kinetics-sounds", layout, root)
    assert len(rows) == CLIPS
    for name, (label, split) in rows.items():
        assert isinstance(label, int) and 0 <= label < 4
        assert (KS_TRAIN if split == "train" else KS_TEST).match(name), name
        assert " " not in name and "," not in name
    assert len({re.sub(r"(_\d+){1,2}$", "", n) for n in rows}) == CLIPS  # one YouTube id per clip
    names = sorted(rows)
    if layout in ("ogm-ge", "balancebench"):
        top = ["audio", "my_test.txt", "my_train.txt", "visual"] if layout == "ogm-ge" else [
            "audio", "test.txt", "train.txt", "visual"]
        assert sorted(p.name for p in root.iterdir()) == top
        suffix = ".npy" if layout == "ogm-ge" else ".pkl"
        assert sorted(p.name for p in (root / "audio").iterdir()) == sorted(f"{n}{suffix}" for n in names)
        for name in names:
            if layout == "ogm-ge":
                x = np.load(root / "audio" / f"{name}.npy")
                assert x.dtype == np.float32 and x.shape == (1024, 128)
            else:
                with open(root / "audio" / f"{name}.pkl", "rb") as handle:
                    x = pickle.load(handle)
                assert isinstance(x, np.ndarray) and x.dtype == np.float32 and x.shape == (257, 1004)
            frames = sorted(p.name for p in (root / "visual" / name).iterdir())
            assert frames == [f"frame_{k:05d}.jpg" for k in range(1, 11)]
        _rgb_jpeg(root / "visual" / names[0] / "frame_00001.jpg")
    elif layout == "amss":
        assert sorted(p.name for p in root.iterdir()) == [
            "annotations", "test_img", "test_wav_pkl", "train_img", "train_wav_pkl"]
        for name, (_, split) in rows.items():
            with open(root / f"{split}_wav_pkl" / f"{name}.pkl", "rb") as handle:
                x = pickle.load(handle)
            assert x.dtype == np.float32 and x.shape == (257, 1004)
            frames = sorted((root / f"{split}_img" / "Image-01-FPS" / name).glob("*.jpg"))
            assert len(frames) == 3 and all(re.match(r"^\d{5}\.jpg$", f.name) for f in frames)
            _rgb_jpeg(frames[-1])
    else:
        assert sorted(p.name for p in root.iterdir()) == ["my_test.txt", "my_train.txt", "video"]
        assert sorted(p.name for p in (root / "video").iterdir()) == list(KS_CLASSES[:4])
        for name, (label, _) in rows.items():
            assert (root / "video" / KS_CLASSES[label] / f"{name}.mp4").is_file()
        streams = _streams(root / "video" / KS_CLASSES[rows[names[0]][0]] / f"{names[0]}.mp4")
        assert (streams["video"].width, streams["video"].height) == (160, 120)
        assert streams["audio"].name == "aac" and streams["audio"].sample_rate == 44100


@pytest.mark.parametrize(("dataset", "layout"), [c for c in CASES if c != ("cremad", "raw")],
                         ids=[i for c, i in zip(CASES, IDS, strict=True) if c != ("cremad", "raw")])
def test_split_stratified_and_deterministic(dataset, layout, written, tmp_path):
    root = written(dataset, layout)
    rows = read_split(dataset, layout, root)
    classes = list(CREMAD_EMOTIONS) if dataset == "cremad" else list(range(4))
    for split in ("train", "test"):
        assert {label for label, s in rows.values() if s == split} == set(classes), split
    for c in classes:  # ~25 % test per class, at least one clip in each split
        n = sum(label == c for label, _ in rows.values())
        n_test = sum(label == c and s == "test" for label, s in rows.values())
        assert n_test == min(n - 1, max(1, round(n / 4)))
    again = write_fixture(dataset, layout, tmp_path / "again", clips=CLIPS, seed=0)
    listing = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    assert listing == sorted(str(p.relative_to(again)) for p in again.rglob("*"))
    for rel in listing:
        if rel.endswith((".csv", ".txt")):
            assert (root / rel).read_bytes() == (again / rel).read_bytes(), rel
    if dataset == "kinetics-sounds":  # another seed gives other clips
        other = write_fixture(dataset, layout, tmp_path / "other", clips=CLIPS, seed=1)
        assert set(read_split(dataset, layout, other)) != set(rows)


def test_content_carries_the_label(written):
    import soundfile as sf

    root = written("cremad", "ogm-ge")
    colours = {}
    for clip in _cremad_clips(root, "ogm-ge"):
        c = CREMAD_EMOTIONS.index(clip.split("_")[2])
        wave, rate = sf.read(str(root / "AudioWAV" / f"{clip}.wav"))
        spectrum = np.abs(np.fft.rfft(wave))
        peak = np.argmax(spectrum) * rate / len(wave)
        assert abs(peak - (300 + 150 * c)) < 5 and 0.2 < np.abs(wave).max() < 0.45
        colours.setdefault(c, []).append(_rgb_jpeg(root / "Image-01-FPS" / clip / "00000.jpg").mean(axis=(0, 1)))
    means = {c: np.mean(v, axis=0) for c, v in colours.items()}
    for c in means:
        for d in means:
            if c < d:
                assert np.abs(means[c] - means[d]).max() > 20, (c, d)


def test_options_and_errors(tmp_path):
    out = write_fixture("cremad", "balancebench", tmp_path / "three", clips=9, classes=3)
    assert {p.stem.split("_")[2] for p in (out / "audio").iterdir()} == {"NEU", "HAP", "SAD"}
    assert len(list((out / "audio").iterdir())) == 9
    out = write_fixture("kinetics-sounds", "ogm-ge", tmp_path / "ks", clips=8, classes=2)
    assert {label for label, _ in read_split("kinetics-sounds", "ogm-ge", out).values()} == {0, 1}
    # more clips than 4 actors x sentences: names stay unique
    out = write_fixture("cremad", "ogm-ge", tmp_path / "many", clips=130, classes=2)
    names = [p.stem for p in (out / "AudioWAV").iterdir()]
    assert len(names) == 130 and all(CREMAD_NAME.match(n) for n in names)
    train = _crlf_lines(out / "annotations" / "train.csv")
    assert len(train) == 130 - 2 * 16  # 65 clips per class, 16 of them in test
    with pytest.raises(ValueError, match="not an empty folder"):
        write_fixture("cremad", "ogm-ge", out, clips=4)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not an empty folder"):
        write_fixture("cremad", "ogm-ge", tmp_path / "file", clips=4)
    with pytest.raises(ValueError, match="layout"):
        write_fixture("cremad", "amss", tmp_path / "x", clips=4)
    with pytest.raises(ValueError, match="dataset"):
        write_fixture("vggsound", "raw", tmp_path / "y", clips=4)
    with pytest.raises(ValueError, match="classes"):
        write_fixture("cremad", "raw", tmp_path / "z", clips=4, classes=7)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert write_fixture("kinetics-sounds", "amss", empty, clips=4) == empty


@pytest.mark.parametrize("layout", LAYOUTS["cremad"])
def test_bad_clips(layout, tmp_path):
    import soundfile as sf

    root = write_fixture("cremad", layout, tmp_path / "bad", clips=6, seed=3)
    made = write_bad_clips(root, layout, BAD_KINDS)
    assert set(made) == set(BAD_KINDS) and len(set(made.values())) == len(BAD_KINDS)
    assert all(CREMAD_NAME.match(c) and c.startswith("1005_") for c in made.values())
    assert made["bad_label"].split("_")[2] not in CREMAD_EMOTIONS
    audio_dir = root / ("audio" if layout == "balancebench" else "AudioWAV")
    ext = ".pt" if layout == "balancebench" else ".wav"

    def audio(kind: str) -> Path:
        return audio_dir / f"{made[kind]}{ext}"

    def visual(kind: str) -> Path:
        return {"raw": root / "VideoFlash" / f"{made[kind]}.flv", "ogm-ge": root / "Image-01-FPS" / made[kind],
                "balancebench": root / "visual" / made[kind]}[layout]

    pointer = audio("lfs_pointer").read_text()
    assert re.fullmatch(r"version https://git-lfs.github.com/spec/v1\noid sha256:[0-9a-f]{64}\nsize 72862\n", pointer)
    assert audio("empty_audio").stat().st_size == 0
    assert audio("audio_only").is_file() and not visual("audio_only").exists()
    assert visual("visual_only").exists() and not audio("visual_only").exists()
    for kind in ("lfs_pointer", "empty_audio", "corrupt_video", "silent_short", "long_clip", "bad_label"):
        assert audio(kind).is_file() and visual(kind).exists(), kind
    if layout == "raw":
        import av

        with pytest.raises(av.error.InvalidDataError):
            av.open(str(visual("corrupt_video"))).close()
        streams = _streams(visual("silent_short"))
        assert "video" in streams and "audio" not in streams
        assert sf.info(str(audio("silent_short"))).frames == 0
        with av.open(str(visual("long_clip"))) as container:
            assert 55 <= container.duration / 1e6 <= 65 and container.streams.audio
        assert 55 <= sf.info(str(audio("long_clip"))).duration <= 65
        assert '1005,' in (root / "VideoDemographics.csv").read_text()
        assert not (root / "train.csv").exists() and not (root / "annotations").exists()
        return
    from PIL import Image, UnidentifiedImageError

    garbage = sorted(visual("corrupt_video").glob("*.jpg"))
    assert len(garbage) == 1
    with pytest.raises(UnidentifiedImageError):
        Image.open(garbage[0])
    if layout == "ogm-ge":
        assert sf.info(str(audio("silent_short"))).frames == 0
        assert sf.info(str(audio("long_clip"))).duration == pytest.approx(60, abs=0.1)
        assert len(list(visual("long_clip").glob("*.jpg"))) >= 60
        train = _crlf_lines(root / "annotations" / "train.csv")
    else:
        train = _lf_lines(root / "train.csv")
        assert train[0] == "name,label"
    listed = {line.split(",")[0]: line.split(",")[1] for line in train}
    for kind, clip in made.items():
        assert (clip in listed) == (kind not in ("audio_only", "visual_only")), kind
    assert listed[made["bad_label"]] == made["bad_label"].split("_")[2]
    # adding the same kinds again does not duplicate rows
    write_bad_clips(root, layout, ["bad_label"])
    again = _crlf_lines(root / "annotations" / "train.csv") if layout == "ogm-ge" else _lf_lines(root / "train.csv")
    assert again == train
    with pytest.raises(ValueError, match="kind"):
        write_bad_clips(root, layout, ["no_such_kind"])
