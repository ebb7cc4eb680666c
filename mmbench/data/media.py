"""Decoding of media files and the audio front-ends of the imbalance codebases.

Everything here is a pure function of a file (or a waveform) returning numpy arrays, so the
dataset adapters and the preprocessing cache can share it. Decoding uses PyAV (bundled FFmpeg:
FLV/VP6F, MP4, MP3, ...) and soundfile (WAV/FLAC) only; `torchaudio.load` and `torchvision.io`
cannot decode video in this environment.

A clip that cannot be used raises `MediaError` whose message is one line naming the file and the
reason, so a loader can report (or skip) the defective CREMA-D clips and Git LFS pointer stubs.
"""

from __future__ import annotations

import bisect
import math
import pickle
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np
import scipy.signal
import soundfile
import torch
import torchaudio.compliance.kaldi
import torchaudio.functional
from PIL import Image, UnidentifiedImageError

__all__ = [
    "FRONTENDS",
    "AudioFrontend",
    "MediaError",
    "check_media_file",
    "frame_times",
    "is_lfs_pointer",
    "load_feature_file",
    "media_duration",
    "read_audio",
    "read_image",
    "read_video_frames",
    "resize_frame",
    "truncation",
]


class MediaError(ValueError):
    """A clip that cannot be used. str(exc) is one line naming the file and the reason; `path` is the
    file at fault where it is known (a clip's video, not its audio, when the video is broken)."""

    def __init__(self, message: str, path: Path | None = None) -> None:
        super().__init__(message)
        self.path = path


_LFS_PREFIX = b"version https://git-lfs"
_LFS_MAX_BYTES = 1024  # real pointer stubs are ~130 bytes
_SOUNDFILE_SUFFIXES = {".wav", ".flac"}
_DECODE_ERRORS: tuple[type[BaseException], ...] = (av.error.FFmpegError, OSError, EOFError, UnicodeDecodeError)


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _fail(path: Path, reason: object) -> MediaError:
    return MediaError(f"{path}: {_one_line(reason)}", path)


# ----------------------------------------------------------------------------------------------
# file checks


def is_lfs_pointer(path: Path) -> bool:
    """True when `path` is a Git LFS pointer stub (what an LFS-less clone of CREMA-D contains)."""
    path = Path(path)
    try:
        if not path.is_file() or path.stat().st_size > _LFS_MAX_BYTES:
            return False
        with path.open("rb") as fh:
            return fh.read(len(_LFS_PREFIX)) == _LFS_PREFIX
    except OSError:
        return False


def check_media_file(path: Path) -> None:
    """Raise MediaError if `path` is missing, not a file, empty, or a Git LFS pointer stub."""
    path = Path(path)
    if not path.exists():
        raise _fail(path, "file not found")
    if not path.is_file():
        raise _fail(path, "not a regular file")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise _fail(path, f"cannot stat file ({exc})") from exc
    if size == 0:
        raise _fail(path, "file is empty (0 bytes)")
    if is_lfs_pointer(path):
        raise _fail(path, "is a Git LFS pointer, not media: run `git lfs pull` in the dataset repository")


def _open(path: Path) -> Any:
    """Open a container for reading; metadata with bad encodings (old FLV writers) is tolerated."""
    try:
        return av.open(str(path), metadata_errors="ignore")
    except _DECODE_ERRORS as exc:
        raise _fail(path, f"cannot open media ({exc})") from exc


# ----------------------------------------------------------------------------------------------
# audio


def read_audio(path: Path, sample_rate: int) -> np.ndarray:
    """Mono float32 waveform of `path` at `sample_rate` Hz (channels averaged).

    WAV/FLAC go through soundfile (falling back to PyAV for codecs libsndfile lacks); every other
    container (.flv .mp4 .mp3 .mkv .webm ...) through PyAV's first audio stream. A decode error
    after some audio was decoded keeps what was decoded (a truncated tail); one before raises.
    """
    path = Path(path)
    if int(sample_rate) != sample_rate or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    sample_rate = int(sample_rate)
    check_media_file(path)
    if path.suffix.lower() in _SOUNDFILE_SUFFIXES:
        try:
            data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
        except (soundfile.LibsndfileError, RuntimeError, OSError, ValueError) as exc:
            try:
                wave = _read_audio_av(path, sample_rate)
            except MediaError:
                raise _fail(path, f"cannot decode audio ({exc})") from exc
        else:
            wave = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
            if wave.size and rate != sample_rate:
                tensor = torch.from_numpy(np.ascontiguousarray(wave))
                wave = torchaudio.functional.resample(tensor, rate, sample_rate).numpy()
    else:
        wave = _read_audio_av(path, sample_rate)
    if wave.size == 0:
        raise _fail(path, "audio has zero samples")
    # All-zero, or stereo channels that cancel (L = -R): nothing to learn from. The bound is one 16-bit
    # step, the residue of L = -R quantised to int16 (its range is asymmetric).
    if float(np.abs(wave).max()) <= 2.0**-15:
        raise _fail(path, "audio is silent (no sample above one 16-bit step after averaging the channels)")
    return np.ascontiguousarray(wave, dtype=np.float32)


def _read_audio_av(path: Path, sample_rate: int) -> np.ndarray:
    chunks: list[np.ndarray] = []
    with _open(path) as container:
        if not container.streams.audio:
            raise _fail(path, "no audio stream")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)

        def take(frames: list[Any]) -> None:
            for out in frames:
                chunks.append(out.to_ndarray().reshape(-1))

        try:
            for packet in container.demux(stream):
                for frame in packet.decode():
                    take(resampler.resample(frame))
        except _DECODE_ERRORS as exc:
            if not chunks:
                raise _fail(path, f"cannot decode audio ({exc})") from exc
        try:
            take(resampler.resample(None))
        except _DECODE_ERRORS as exc:
            if not chunks:
                raise _fail(path, f"cannot decode audio ({exc})") from exc
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(chunks).astype(np.float32, copy=False)


def media_duration(path: Path) -> float:
    """Duration in seconds of an audio or video file (header values; packets scanned if absent)."""
    path = Path(path)
    check_media_file(path)
    if path.suffix.lower() in _SOUNDFILE_SUFFIXES:
        try:
            info = soundfile.info(str(path))
        except (soundfile.LibsndfileError, RuntimeError, OSError, ValueError):
            pass  # let PyAV try
        else:
            return float(info.frames) / float(info.samplerate)
    with _open(path) as container:
        if container.duration is not None and container.duration > 0:
            return float(container.duration) / av.time_base
        durations = [
            float(s.duration * s.time_base) for s in container.streams if s.duration and s.time_base is not None
        ]
        if durations and max(durations) > 0:
            return max(durations)
        # no duration in the header (e.g. CREMA-D 1064_TIE_SAD_XX.flv): the end of the last packet
        end = 0.0
        try:
            for packet in container.demux():
                if packet.pts is None or packet.time_base is None:
                    continue
                end = max(end, float((packet.pts + (packet.duration or 0)) * packet.time_base))
        except _DECODE_ERRORS as exc:
            if end <= 0:
                raise _fail(path, f"cannot read media ({exc})") from exc
    if end <= 0:
        raise _fail(path, "media has no duration")
    return end


# ----------------------------------------------------------------------------------------------
# video and images


def truncation(path: Path, keep: float = 0.9) -> str | None:
    """Why `path` looks cut short, or None: it holds less than `keep` of the audio or video its header
    declares (a download or copy that stopped early). Decoders read such a file without an error."""
    path = Path(path)
    if path.suffix.lower() == ".wav":
        declared, held, rate = _wav_data_bytes(path)
        if declared and held < keep * declared:
            return f"holds {held / rate:.2f} s of the {declared / rate:.2f} s of audio its header declares"
        return None
    try:
        with _open(path) as container:
            declared = float(container.duration) / av.time_base if container.duration else 0.0
            end = 0.0
            try:
                for packet in container.demux():
                    if packet.pts is not None and packet.time_base is not None:
                        end = max(end, float((packet.pts + (packet.duration or 0)) * packet.time_base))
            except _DECODE_ERRORS as exc:
                return f"stops with a read error after {end:.2f} s ({_one_line(exc)})"
    except MediaError:
        return None  # unreadable files are rejected by the decoders, with their reason
    if declared and end < keep * declared:
        return f"holds {end:.2f} s of the {declared:.2f} s its header declares"
    return None


def _wav_data_bytes(path: Path) -> tuple[int, int, float]:
    """(bytes of samples the RIFF header declares, bytes the file holds, bytes per second); zeros where
    the header cannot be read."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return 0, 0, 1.0
        rate = 1.0
        while True:
            chunk = handle.read(8)
            if len(chunk) < 8:
                return 0, 0, 1.0
            name, length = chunk[:4], int.from_bytes(chunk[4:], "little")
            if name == b"fmt ":
                fmt = handle.read(length + length % 2)
                rate = float(int.from_bytes(fmt[8:12], "little")) or 1.0  # average bytes per second
            elif name == b"data":
                return length, size - handle.tell(), rate
            else:
                handle.seek(length + length % 2, 1)


def frame_times(duration: float, per_second: float) -> list[float]:
    """Target timestamps of candidate frames: the middle of each 1/per_second interval before `duration`.

    (k + 0.5) / per_second for k = 0, 1, ... while below `duration` (the lab's frame extractor takes the
    middle of each second); a clip shorter than half an interval gets its middle, duration / 2.
    """
    if per_second <= 0:
        raise ValueError(f"per_second must be positive, got {per_second!r}")
    times: list[float] = []
    k = 0
    while (t := (k + 0.5) / per_second) < duration:
        times.append(t)
        k += 1
    return times or [max(duration, 0.0) / 2.0]


def _video_fps(stream: Any) -> float | None:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            value = float(rate)
            if math.isfinite(value) and value > 0:
                return value
    return None


def _decoded_frames(path: Path, container: Any, stream: Any, fps: float | None) -> Iterator[tuple[float, Any]]:
    """(timestamp, frame) in decoding order; a mid-stream decode error ends the stream early."""
    last: float | None = None
    step = 1.0 / fps if fps else 0.0
    produced = False
    try:
        for packet in container.demux(stream):
            for frame in packet.decode():
                t = frame.time
                if t is None:  # no pts: assume constant frame rate
                    t = 0.0 if last is None else last + step
                last = float(t)
                produced = True
                yield last, frame
    except _DECODE_ERRORS as exc:
        if not produced:
            raise _fail(path, f"cannot decode video ({exc})") from exc


class _Nearest:
    """Nearest decoded frame for each of a sorted stream of target times, resolved on the fly.

    The nearest frame to a target is the last frame at or before it or the first one after it, so
    each target is settled as soon as a frame at or past it arrives and only the chosen frames are
    kept (not every decoded frame); ties go to the earlier frame.
    """

    def __init__(self, target: Callable[[int], float | None]) -> None:
        self.target = target  # k -> k-th target time (sorted), None past the last one
        self.chosen: list[Any] = []
        self.prev: tuple[float, Any] | None = None

    @property
    def pending(self) -> float | None:
        return self.target(len(self.chosen))

    def add(self, t: float, frame: Any) -> None:
        while (g := self.pending) is not None and g <= t:
            if self.prev is not None and g - self.prev[0] <= t - g:
                self.chosen.append(self.prev[1])
            else:
                self.chosen.append(frame)
        self.prev = (t, frame)


def read_video_frames(
    path: Path,
    times: Sequence[float] | None = None,
    per_second: float = 1.0,
    max_seconds: float | None = None,
) -> list[np.ndarray]:
    """Frames of the first video stream nearest to target times, as HxWx3 uint8 RGB arrays.

    Frames are chosen by decoded timestamp (`frame.time`, seconds on the file's timeline), never by
    a frame count (FLV headers have none). With `times`, one frame per time in the given order;
    by default the targets are `frame_times(duration, per_second)` where duration is the last
    decoded timestamp + 1/fps. `max_seconds` drops given times after it, and limits the default
    targets to `frame_times(min(duration, max_seconds), per_second)`, which also bounds decoding
    (CREMA-D 1064_IEO_DIS_MD.flv is a minute long). Decoding stops once past the last target.
    A decode error after some frames were decoded keeps those frames; one before raises.
    """
    path = Path(path)
    if per_second <= 0:
        raise ValueError(f"per_second must be positive, got {per_second!r}")
    check_media_file(path)
    explicit: list[float] | None = None
    if times is not None:
        explicit = [float(t) for t in times if max_seconds is None or float(t) <= max_seconds]
    with _open(path) as container:
        if not container.streams.video:
            raise _fail(path, "no video stream")
        stream = container.streams.video[0]
        fps = _video_fps(stream)
        if explicit is not None:
            return _pick_explicit(path, container, stream, fps, explicit)
        return _pick_grid(path, container, stream, fps, per_second, max_seconds)


def _rgb(frame: Any) -> np.ndarray:
    return np.ascontiguousarray(frame.to_ndarray(format="rgb24"))


def _pick_explicit(path: Path, container: Any, stream: Any, fps: float | None, times: list[float]) -> list[np.ndarray]:
    order = sorted(range(len(times)), key=times.__getitem__)
    sorted_times = [times[i] for i in order]
    picker = _Nearest(lambda k: sorted_times[k] if k < len(sorted_times) else None)
    decoded = False
    for t, frame in _decoded_frames(path, container, stream, fps):
        decoded = True
        picker.add(t, frame)
        if picker.pending is None:
            break  # every target settled: the rest of the clip is not needed
    if not decoded:
        raise _fail(path, "no video frames decoded")
    assert picker.prev is not None
    while len(picker.chosen) < len(sorted_times):  # targets after the last frame
        picker.chosen.append(picker.prev[1])
    out: list[np.ndarray] = [np.empty(0, np.uint8)] * len(times)
    for rank, i in enumerate(order):
        out[i] = _rgb(picker.chosen[rank])
    return out


def _pick_grid(
    path: Path, container: Any, stream: Any, fps: float | None, per_second: float, max_seconds: float | None
) -> list[np.ndarray]:
    first_target = 0.5 / per_second
    picker = _Nearest(lambda k: (k + 0.5) / per_second)
    early: list[tuple[float, Any]] = []  # frames up to the first one at/after first_target, for duration / 2
    timestamps: list[float] = []  # to estimate the frame rate when the header has none
    for t, frame in _decoded_frames(path, container, stream, fps):
        if not early or early[-1][0] < first_target:
            early.append((t, frame))
        if len(timestamps) < 2:
            timestamps.append(t)
        picker.add(t, frame)
        if max_seconds is not None and t >= max_seconds:
            break
    if picker.prev is None:
        raise _fail(path, "no video frames decoded")
    last_t, last_frame = picker.prev
    if fps is None and len(timestamps) == 2 and timestamps[1] > timestamps[0]:
        fps = 1.0 / (timestamps[1] - timestamps[0])
    duration = last_t + (1.0 / fps if fps else 0.0)
    if max_seconds is not None:
        duration = min(duration, max_seconds)
    targets = frame_times(duration, per_second)
    if duration <= first_target:  # shorter than half an interval: the one target is duration / 2
        middle = targets[0]
        times_early = [t for t, _ in early]
        i = bisect.bisect_left(times_early, middle)
        candidates = [j for j in (i - 1, i) if 0 <= j < len(early)]
        best = min(candidates, key=lambda j: (abs(times_early[j] - middle), j))
        return [_rgb(early[best][1])]
    frames = [picker.chosen[k] if k < len(picker.chosen) else last_frame for k in range(len(targets))]
    return [_rgb(f) for f in frames]


def read_image(path: Path) -> np.ndarray:
    """HxWx3 uint8 RGB array of an image file (grayscale, palette and RGBA images are converted)."""
    path = Path(path)
    check_media_file(path)
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise _fail(path, f"cannot read image ({exc})") from exc
    return np.array(rgb, dtype=np.uint8)


def resize_frame(frame: np.ndarray, size: int) -> np.ndarray:
    """HxWx3 uint8 -> (3, size, size) uint8, squashed to a square like torchvision Resize((size, size)).

    PIL's bilinear resize widens its filter when shrinking, i.e. it antialiases like torchvision.
    """
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 frame, got shape {frame.shape} dtype {frame.dtype}")
    if size <= 0:
        raise ValueError(f"size must be positive, got {size!r}")
    resized = Image.fromarray(np.ascontiguousarray(frame)).resize((size, size), Image.Resampling.BILINEAR)
    return np.ascontiguousarray(np.asarray(resized, dtype=np.uint8).transpose(2, 0, 1))


# ----------------------------------------------------------------------------------------------
# precomputed features


def load_feature_file(path: Path) -> np.ndarray:
    """A precomputed audio feature matrix (.pt / .npy / .pkl) as a float32 2-D array.

    Leading singleton dimensions are dropped: BalanceBenchmark stores (1, 1024, 128) tensors.
    .pkl files are unpickled, so only load feature files you trust.
    """
    path = Path(path)
    check_media_file(path)
    suffix = path.suffix.lower()
    try:
        if suffix in {".pt", ".pth"}:
            content: Any = torch.load(path, map_location="cpu", weights_only=True)
        elif suffix == ".npy":
            content = np.load(path, allow_pickle=False)
        elif suffix in {".pkl", ".pickle"}:
            with path.open("rb") as fh:
                content = pickle.load(fh)
        else:
            raise _fail(path, f"unknown feature file type {suffix!r} (expected .pt, .npy or .pkl)")
    except MediaError:
        raise
    except Exception as exc:  # torch/numpy/pickle raise many types for a damaged file
        raise _fail(path, f"cannot load features ({type(exc).__name__}: {exc})") from exc
    if isinstance(content, torch.Tensor):
        array = content.detach().cpu().numpy()
    elif isinstance(content, np.ndarray):
        array = content
    else:
        raise _fail(path, f"holds a {type(content).__name__}, not an array or tensor")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise _fail(path, f"holds an array of dtype {array.dtype}, not real numbers")
    while array.ndim > 2 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise _fail(path, f"features must be 2-D after dropping leading singleton dims, got shape {array.shape}")
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(array).all():
        raise _fail(path, "features contain NaN or infinite values")
    return array


# ----------------------------------------------------------------------------------------------
# audio front-ends


@dataclass(frozen=True)
class AudioFrontend:
    """One codebase's waveform -> 2-D audio feature recipe (shape exactly as that codebase makes it)."""

    name: str
    sample_rate: int  # waveform rate the front-end expects
    shape: tuple[int, int]  # output (F, T) or (T, F) exactly as the original codebase produces
    description: str
    compute: Callable[[np.ndarray], np.ndarray] = field(repr=False, compare=False)

    def __call__(self, waveform: np.ndarray) -> np.ndarray:
        wave = np.asarray(waveform)
        if wave.ndim == 2 and 1 in wave.shape:
            wave = wave.reshape(-1)
        if wave.ndim != 1:
            raise MediaError(f"{self.name}: expected a mono 1-D waveform, got shape {wave.shape}")
        if wave.size == 0:
            raise MediaError(f"{self.name}: waveform is empty")
        wave = wave.astype(np.float32, copy=False)
        if not np.isfinite(wave).all():
            raise MediaError(f"{self.name}: waveform contains NaN or infinite values")
        out = np.ascontiguousarray(self.compute(wave), dtype=np.float32)
        if out.shape != self.shape:  # a recipe bug, not a data problem
            raise RuntimeError(f"{self.name}: produced shape {out.shape}, declared {self.shape}")
        return out


def _tile_cut(wave: np.ndarray, tiles: int, length: int) -> np.ndarray:
    """np.tile(wave, tiles)[:length], tiling further when `tiles` copies are shorter than `length`.

    The original code would return a shorter array (and a narrower spectrogram) for such a clip;
    tiling on keeps the declared shape. CREMA-D clips (>= 1.27 s) never need it for the 3-s recipe.
    """
    reps = max(tiles, math.ceil(length / wave.size))
    return np.tile(wave, reps)[:length]


def _log_stft(wave: np.ndarray, tiles: int, seconds: int, sample_rate: int = 22050) -> np.ndarray:
    """OGM-GE CramedDataset: librosa.stft(n_fft=512, hop_length=353) of the tiled clip, log(|X| + 1e-7).

    Reflect padding as librosa < 0.10 (the codebase's era) did; computed in float64.
    """
    x = np.clip(_tile_cut(wave, tiles, sample_rate * seconds), -1.0, 1.0)
    window = torch.hann_window(512, periodic=True, dtype=torch.float64)
    spec = torch.stft(
        torch.from_numpy(x.astype(np.float64)), n_fft=512, hop_length=353, win_length=512, window=window,
        center=True, pad_mode="reflect", return_complex=True,
    )
    return np.log(spec.abs().numpy() + 1e-7)


_FBANK_MEAN = -4.503877  # AudioSet statistics used by OGM-GE process_audio.py / BalanceBenchmark
_FBANK_STD = 5.141276
_FBANK_FRAMES = 1024
_FBANK_WINDOW = 400  # 25 ms at 16 kHz: Kaldi needs at least one full window


def _fbank(wave: np.ndarray) -> np.ndarray:
    """Kaldi fbank (128 mel, 25 ms / 10 ms, Hann, htk_compat, no dither), padded/cut to 1024 frames."""
    if wave.size < _FBANK_WINDOW:
        raise MediaError(f"fbank: waveform has {wave.size} samples, fewer than one 25 ms window ({_FBANK_WINDOW})")
    w = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
    w = w - w.mean()
    fbank = torchaudio.compliance.kaldi.fbank(
        w[None], htk_compat=True, sample_frequency=16000, use_energy=False, window_type="hanning",
        num_mel_bins=128, dither=0.0, frame_shift=10,
    )
    n = fbank.shape[0]
    if n < _FBANK_FRAMES:  # padding comes before normalising, as in the original
        fbank = torch.nn.functional.pad(fbank, (0, 0, 0, _FBANK_FRAMES - n))
    else:
        fbank = fbank[:_FBANK_FRAMES]
    return ((fbank - _FBANK_MEAN) / (_FBANK_STD * 2)).numpy()


def _psd(wave: np.ndarray) -> np.ndarray:
    """Old OGM-GE obtain_audio_spectrogram.py: log scipy PSD spectrogram of the tiled clip, z-scored per clip.

    Computed in float32 like the original (librosa returns float32, scipy keeps the precision).
    """
    x = np.clip(_tile_cut(wave, 10, 160_000), -1.0, 1.0).astype(np.float32)
    _, _, spec = scipy.signal.spectrogram(x, nperseg=512, noverlap=353)
    spec = np.log(spec + 1e-7)
    # statistics in float64 so that a constant (silent) clip gives std exactly 0, not rounding noise
    mean, std = float(spec.mean(dtype=np.float64)), float(spec.std(dtype=np.float64))
    return (spec - mean) / std if std > 1e-9 else spec - mean


FRONTENDS: dict[str, AudioFrontend] = {
    "ogm-stft": AudioFrontend(
        name="ogm-stft",
        sample_rate=22050,
        shape=(257, 188),
        description="OGM-GE CramedDataset: 22.05 kHz, tile x3 and cut to 3 s, clip [-1,1], "
        "STFT n_fft 512 hop 353 Hann center/reflect, log(|X| + 1e-7)",
        compute=lambda wave: _log_stft(wave, tiles=3, seconds=3),
    ),
    "aug-stft": AudioFrontend(
        name="aug-stft",
        sample_rate=22050,
        shape=(257, 1250),
        description="NeurIPS25-AUG CREMA.py: as ogm-stft but tile x20 and cut to 20 s",
        compute=lambda wave: _log_stft(wave, tiles=20, seconds=20),
    ),
    "aug-ks-stft": AudioFrontend(
        name="aug-ks-stft",
        sample_rate=35400,
        shape=(257, 1003),
        description="NeurIPS25-AUG historical dataset/KS.py (commit 966dbf5): 35.4 kHz, tiled until >= 10 s "
        "and cut to 10 s, clip [-1,1], STFT n_fft 512 hop 353, log(|X| + 1e-7)",
        # doubling until >= 10 s then cutting keeps the first 10 s of the periodic extension, which
        # is what tiling once to the length gives
        compute=lambda wave: _log_stft(wave, tiles=1, seconds=10, sample_rate=35400),
    ),
    "fbank": AudioFrontend(
        name="fbank",
        sample_rate=16000,
        shape=(_FBANK_FRAMES, 128),
        description="OGM-GE process_audio.py / BalanceBenchmark .pt: 16 kHz, mean removed, Kaldi fbank 128 mel "
        "10 ms shift, zero-pad/cut to 1024 frames, (x + 4.503877) / (2 * 5.141276)",
        compute=_fbank,
    ),
    "psd": AudioFrontend(
        name="psd",
        sample_rate=22050,
        shape=(257, 1004),
        description="old OGM-GE / AMSS pickles: 22.05 kHz, tile x10, first 160,000 samples, clip [-1,1], "
        "scipy.signal.spectrogram nperseg 512 noverlap 353, log(S + 1e-7), per-clip z-score",
        compute=_psd,
    ),
}
