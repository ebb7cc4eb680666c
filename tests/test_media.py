"""Media decoding and audio front-ends (mmbench.data.media), on media generated in temporary folders."""

from __future__ import annotations

import pickle
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import scipy.signal
import soundfile
import torch
import torchaudio.compliance.kaldi
from PIL import Image

from mmbench.data.media import (
    FRONTENDS,
    MediaError,
    check_media_file,
    frame_times,
    is_lfs_pointer,
    load_feature_file,
    media_duration,
    read_audio,
    read_image,
    read_video_frames,
    resize_frame,
)

LFS_STUB = (
    "version https://git-lfs.github.com/spec/v1\n"
    "oid sha256:abc0123456789abcdef0123456789abcdef0123456789abcdef0123456789ab\n"
    "size 72862\n"
)
FPS = Fraction(30000, 1001)
N_FRAMES = 60  # ~2.0 s at 29.97 fps
TONE_HZ = 440.0


def gray(i: int) -> int:
    """Brightness that encodes frame i in the video fixtures."""
    return 10 + 3 * i


def dominant_hz(wave: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(wave.size)))
    return float(np.fft.rfftfreq(wave.size, 1.0 / rate)[np.argmax(spectrum)])


def write_media(
    path: Path, container_format: str, video_codec: str | None, audio_codec: str | None, n_frames: int = N_FRAMES
) -> None:
    """A clip whose frame i is solid gray(i) and whose audio is a 440 Hz sine (mono, 44.1 kHz)."""
    rate = 44100
    seconds = n_frames / FPS
    sine = 0.5 * np.sin(2 * np.pi * TONE_HZ * np.arange(int(seconds * rate)) / rate)
    with av.open(str(path), "w", format=container_format) as out:
        # every stream must exist before the first packet is muxed (the header is written then)
        video = out.add_stream(video_codec, rate=FPS) if video_codec else None
        audio = out.add_stream(audio_codec, rate=rate, layout="mono") if audio_codec else None
        if video is not None:
            video.width, video.height, video.pix_fmt = 480, 360, "yuv420p"
            video.bit_rate = 4_000_000  # keeps the per-frame gray levels within ~1 of their value
        samples: np.ndarray = np.zeros(0)
        if audio is not None:  # encoders want planar samples of their own type: libmp3lame s32p, aac fltp
            fmt = audio.format.name
            dtype = {"s32": np.int32, "s16": np.int16}.get(fmt[:3], np.float32)
            scale = {"s32": 2**31 - 1, "s16": 2**15 - 1}.get(fmt[:3], 1)
            samples = (sine * scale).astype(dtype)
        step, sent = 1152, 0  # one MP3 frame of audio at a time
        for i in range(n_frames + 1):
            if video is not None and i < n_frames:
                rgb = np.full((360, 480, 3), gray(i), np.uint8)
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
                frame.pts = i
                out.mux(video.encode(frame))
            # interleave: audio up to the end of this video frame (all of it after the last one)
            until = samples.size if i == n_frames else int((i + 1) / FPS * rate)
            while audio is not None and sent < until:
                chunk = samples[None, sent : sent + step]
                frame = av.AudioFrame.from_ndarray(chunk, format=audio.format.name, layout="mono")
                frame.sample_rate, frame.pts, frame.time_base = rate, sent, Fraction(1, rate)
                out.mux(audio.encode(frame))
                sent += chunk.shape[1]
        if video is not None:
            out.mux(video.encode())
        if audio is not None:
            out.mux(audio.encode())


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The CREMA-D VideoFlash format (flv1 stands in for VP6F, which FFmpeg cannot encode) and friends."""
    root = tmp_path_factory.mktemp("media")
    paths = {
        "flv": root / "1001_DFA_ANG_XX.flv",  # video + mp3 audio, like VideoFlash/
        "mp4_silent": root / "silent.mp4",  # mpeg4 video, no audio stream
        "mp3": root / "1001_DFA_ANG_XX.mp3",  # audio only, like AudioMP3/
    }
    write_media(paths["flv"], "flv", "flv", "mp3")
    write_media(paths["mp4_silent"], "mp4", "mpeg4", None)
    write_media(paths["mp3"], "mp3", None, "mp3")
    return paths


def decoded_timestamps(path: Path) -> list[float]:
    with av.open(str(path)) as container:
        return [float(frame.time) for frame in container.decode(video=0)]


def expected_index(timestamps: list[float], target: float) -> int:
    return int(np.argmin([abs(t - target) for t in timestamps]))


def assert_frame_is(frame: np.ndarray, index: int) -> None:
    assert frame.shape == (360, 480, 3) and frame.dtype == np.uint8
    # codec loss on a solid gray frame is about 1 level; neighbours differ by 3
    assert abs(float(frame.mean()) - gray(index)) < 1.45, (float(frame.mean()), gray(index))


# ----------------------------------------------------------------------------------------------
# audio front-ends


def sine(seconds: float, rate: int, hz: float = 440.0, amplitude: float = 0.5, seed: int = 0) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    noise = np.random.default_rng(seed).normal(0, 0.05, t.size)
    return (amplitude * np.sin(2 * np.pi * hz * t) + noise).astype(np.float32)


@pytest.mark.parametrize("name", sorted(FRONTENDS))
@pytest.mark.parametrize("seconds", [1.3, 2.5, 25.0])
def test_frontend_shape_and_dtype(name: str, seconds: float) -> None:
    frontend = FRONTENDS[name]
    out = frontend(sine(seconds, frontend.sample_rate))
    assert out.shape == frontend.shape
    assert out.dtype == np.float32
    assert np.isfinite(out).all()


def test_frontend_declarations() -> None:
    assert set(FRONTENDS) == {"ogm-stft", "aug-stft", "aug-ks-stft", "fbank", "psd"}
    got = {name: (f.name, f.sample_rate, f.shape) for name, f in FRONTENDS.items()}
    assert got == {
        "ogm-stft": ("ogm-stft", 22050, (257, 188)),
        "aug-stft": ("aug-stft", 22050, (257, 1250)),
        "aug-ks-stft": ("aug-ks-stft", 35400, (257, 1003)),
        "fbank": ("fbank", 16000, (1024, 128)),
        "psd": ("psd", 22050, (257, 1004)),
    }


@pytest.mark.parametrize("name", sorted(FRONTENDS))
@pytest.mark.parametrize("bad", [np.zeros(0, np.float32), np.full(5000, np.nan, np.float32)])
def test_frontend_rejects_empty_or_nonfinite(name: str, bad: np.ndarray) -> None:
    with pytest.raises(MediaError, match=name):
        FRONTENDS[name](bad)


def numpy_log_stft(x: np.ndarray) -> np.ndarray:
    """librosa.stft(n_fft=512, hop_length=353) with centre reflect padding, by hand; log(|X| + 1e-7)."""
    n_fft, hop = 512, 353
    padded = np.pad(x.astype(np.float64), n_fft // 2, mode="reflect")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    n_frames = 1 + x.size // hop
    frames = np.stack([padded[j * hop : j * hop + n_fft] * window for j in range(n_frames)])
    return np.log(np.abs(np.fft.rfft(frames, axis=1)).T + 1e-7)


def test_ogm_stft_matches_hand_computed_reference() -> None:
    clip = sine(0.5, 22050, amplitude=1.4)  # exceeds [-1, 1]: clipping matters
    x = np.clip(np.tile(clip, 6)[:66150], -1, 1)  # 0.5 s needs 6 tiles to reach 3 s
    ref = numpy_log_stft(x)
    assert ref.shape == (257, 188)
    np.testing.assert_allclose(FRONTENDS["ogm-stft"](clip), ref, atol=1e-4, rtol=0)


def test_aug_ks_stft_doubles_until_ten_seconds_then_cuts() -> None:
    """AUG's historical KS loader (dataset/KS.py ~97-107, commit 966dbf5): load at 35,400 Hz, double
    the clip (np.tile(x, 2)) while it is shorter than 10 s, keep the first 354,000 samples, clip."""
    clip = sine(3.0, 35400, amplitude=1.3)
    doubled = clip
    while doubled.size / 35400 < 10.0:
        doubled = np.tile(doubled, 2)  # 3 s -> 6 s -> 12 s
    x = np.clip(doubled[:354000], -1, 1)
    ref = numpy_log_stft(x)
    assert ref.shape == (257, 1003)
    np.testing.assert_allclose(FRONTENDS["aug-ks-stft"](clip), ref, atol=1e-4, rtol=0)


def test_stft_tiling_and_cutting() -> None:
    ogm, aug = FRONTENDS["ogm-stft"], FRONTENDS["aug-stft"]
    one_second = sine(1.0, 22050, hz=300.0)
    repeated = np.tile(one_second, 3)
    assert repeated.size == 66150
    tiled = ogm(one_second)
    np.testing.assert_array_equal(tiled, ogm(repeated))
    # tiling, not zero padding: the last second is not silence
    zero_padded = ogm(np.concatenate([one_second, np.zeros(44100, np.float32)]))
    assert np.abs(tiled[:, -60:] - zero_padded[:, -60:]).max() > 1.0
    # a long clip is only cut to its first 3 s
    long_clip = sine(25.0, 22050, hz=523.0)
    np.testing.assert_array_equal(ogm(long_clip), ogm(long_clip[:66150]))
    np.testing.assert_array_equal(aug(long_clip), aug(long_clip[:441000]))
    # both recipes see the same samples: frames fully inside the 3 s agree
    np.testing.assert_allclose(aug(one_second)[:, :187], tiled[:, :187], atol=1e-5)


def test_fbank_matches_direct_kaldi_call() -> None:
    wave = sine(2.5, 16000) + 0.2  # with a DC offset, removed as in the original
    w = torch.from_numpy(wave)[None]
    w = w - w.mean()
    direct = torchaudio.compliance.kaldi.fbank(
        w, htk_compat=True, sample_frequency=16000, use_energy=False, window_type="hanning",
        num_mel_bins=128, dither=0.0, frame_shift=10,
    ).numpy()
    n = direct.shape[0]
    assert n == 1 + (wave.size - 400) // 160 == 248
    out = FRONTENDS["fbank"](wave)
    np.testing.assert_allclose(out[:n], (direct + 4.503877) / (2 * 5.141276), atol=1e-5)
    pad_value = (0 + 4.503877) / (2 * 5.141276)
    assert pad_value == pytest.approx(0.43797, abs=2e-4)
    np.testing.assert_allclose(out[n:], pad_value, atol=1e-6)  # padded before normalising
    assert np.abs(out[:n] - pad_value).mean() > 0.1


def test_fbank_long_clip_is_cut_and_too_short_clip_rejected() -> None:
    wave = sine(25.0, 16000)
    w = torch.from_numpy(wave)[None]
    direct = torchaudio.compliance.kaldi.fbank(
        w - w.mean(), htk_compat=True, sample_frequency=16000, use_energy=False, window_type="hanning",
        num_mel_bins=128, dither=0.0, frame_shift=10,
    ).numpy()
    assert direct.shape[0] > 1024
    np.testing.assert_allclose(FRONTENDS["fbank"](wave), (direct[:1024] + 4.503877) / (2 * 5.141276), atol=1e-5)
    with pytest.raises(MediaError, match="25 ms"):
        FRONTENDS["fbank"](wave[:399])


@pytest.mark.parametrize("seconds", [0.5, 2.5])  # 0.5 s: 10 tiles are too few, tiling goes on
def test_psd_matches_scipy_and_zscore(seconds: float) -> None:
    clip = sine(seconds, 22050, amplitude=1.3)
    x = np.clip(np.tile(clip, 20)[:160000], -1, 1).astype(np.float32)
    _, _, spec = scipy.signal.spectrogram(x, nperseg=512, noverlap=353)
    ref = np.log(spec + 1e-7)
    ref = (ref - ref.mean()) / ref.std()
    out = FRONTENDS["psd"](clip)
    assert out.shape == ref.shape == (257, 1004)
    np.testing.assert_allclose(out, ref, atol=1e-4)
    assert abs(float(out.mean())) < 1e-4 and float(out.std()) == pytest.approx(1.0, abs=1e-4)


def test_psd_silent_clip_does_not_divide_by_zero() -> None:
    out = FRONTENDS["psd"](np.zeros(22050, np.float32))
    assert np.isfinite(out).all() and np.abs(out).max() == 0


# ----------------------------------------------------------------------------------------------
# audio files


def test_read_wav_at_native_and_other_rate(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    t = np.arange(16000 * 2) / 16000
    ints = (8000 * np.sin(2 * np.pi * 440 * t) + rng.normal(0, 200, t.size)).astype(np.int16)
    path = tmp_path / "1001_DFA_ANG_XX.wav"
    soundfile.write(path, ints, 16000, subtype="PCM_16")
    wave = read_audio(path, 16000)
    assert wave.dtype == np.float32 and wave.shape == (ints.size,)
    assert np.abs(wave - ints / 32768.0).max() <= 1 / 32768
    up = read_audio(path, 22050)
    assert abs(up.size - ints.size * 22050 / 16000) <= 1
    assert dominant_hz(up, 22050) == pytest.approx(440, abs=2)
    assert media_duration(path) == pytest.approx(2.0)


def test_read_stereo_wav_averages_channels(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    left, right = rng.uniform(-0.5, 0.5, 8000), rng.uniform(-0.5, 0.5, 8000)
    path = tmp_path / "stereo.wav"
    soundfile.write(path, np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    np.testing.assert_allclose(read_audio(path, 16000), (left + right) / 2, atol=1e-6)


def test_lfs_pointer_stub_is_named(tmp_path: Path) -> None:
    stub = tmp_path / "1001_DFA_ANG_XX.wav"
    stub.write_text(LFS_STUB)
    assert is_lfs_pointer(stub)
    for call in (lambda: read_audio(stub, 16000), lambda: check_media_file(stub), lambda: media_duration(stub)):
        with pytest.raises(MediaError) as info:
            call()
        message = str(info.value)
        assert "1001_DFA_ANG_XX.wav" in message and "LFS" in message and "git lfs pull" in message
        assert "\n" not in message
    real = tmp_path / "real.wav"
    soundfile.write(real, np.zeros(100, np.int16), 16000)
    assert not is_lfs_pointer(real)
    check_media_file(real)


def test_empty_missing_and_garbage_audio(tmp_path: Path) -> None:
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(MediaError, match="empty"):
        read_audio(empty, 16000)
    with pytest.raises(MediaError, match="not found"):
        read_audio(tmp_path / "missing.wav", 16000)
    with pytest.raises(MediaError, match="not a regular file"):
        check_media_file(tmp_path)
    garbage = np.random.default_rng(3).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    for name in ("garbage.wav", "garbage.flv", "garbage.mp3"):
        path = tmp_path / name
        path.write_bytes(garbage)
        with pytest.raises(MediaError, match=name):
            read_audio(path, 16000)


def test_read_audio_from_flv_and_mp3(media: dict[str, Path]) -> None:
    duration = N_FRAMES / FPS
    for key in ("flv", "mp3"):
        wave = read_audio(media[key], 16000)
        assert wave.dtype == np.float32 and wave.ndim == 1
        assert abs(wave.size - duration * 16000) < 0.1 * 16000  # encoder delay/padding only
        assert dominant_hz(wave, 16000) == pytest.approx(TONE_HZ, abs=2)
        assert 0.3 < np.abs(wave).max() < 0.7
        assert media_duration(media[key]) == pytest.approx(float(duration), abs=0.1)


def test_video_without_audio_stream(media: dict[str, Path]) -> None:
    with pytest.raises(MediaError, match="no audio stream"):
        read_audio(media["mp4_silent"], 16000)


# ----------------------------------------------------------------------------------------------
# video


def test_frame_times() -> None:
    assert frame_times(2.235, 1.0) == [0.5, 1.5]
    assert frame_times(2.6, 1.0) == [0.5, 1.5, 2.5]
    assert frame_times(1.0, 2.0) == [0.25, 0.75]
    assert frame_times(10.0, 1.0) == [k + 0.5 for k in range(10)]
    assert frame_times(0.4, 1.0) == [0.2]  # shorter than half an interval: its middle
    assert frame_times(0.5, 1.0) == [0.25]
    with pytest.raises(ValueError):
        frame_times(2.0, 0)


def test_video_frames_nearest_to_requested_times(media: dict[str, Path]) -> None:
    path = media["flv"]
    stamps = decoded_timestamps(path)
    assert len(stamps) == N_FRAMES
    targets = [1.0, 0.0, 0.37, 1.62, 1.0, 30.0]  # unsorted, repeated, past the end
    frames = read_video_frames(path, times=targets)
    assert len(frames) == len(targets)
    for target, frame in zip(targets, frames, strict=True):
        assert_frame_is(frame, expected_index(stamps, target))
    assert_frame_is(frames[-1], N_FRAMES - 1)


@pytest.mark.parametrize("per_second", [1.0, 2.0, 3.0])
def test_video_frames_default_targets(media: dict[str, Path], per_second: float) -> None:
    path = media["flv"]
    stamps = decoded_timestamps(path)
    targets = frame_times(stamps[-1] + 1 / float(FPS), per_second)
    assert len(targets) == int(2 * per_second)  # a 2.0 s clip
    frames = read_video_frames(path, per_second=per_second)
    assert len(frames) == len(targets)
    for target, frame in zip(targets, frames, strict=True):
        assert_frame_is(frame, expected_index(stamps, target))


def test_video_frames_from_mp4(media: dict[str, Path]) -> None:
    path = media["mp4_silent"]
    stamps = decoded_timestamps(path)
    frames = read_video_frames(path, times=[0.5, 1.5])
    for target, frame in zip([0.5, 1.5], frames, strict=True):
        assert_frame_is(frame, expected_index(stamps, target))


def test_max_seconds_drops_late_targets(media: dict[str, Path]) -> None:
    path = media["flv"]
    stamps = decoded_timestamps(path)
    frames = read_video_frames(path, max_seconds=1.0)
    assert len(frames) == 1
    assert_frame_is(frames[0], expected_index(stamps, 0.5))
    frames = read_video_frames(path, times=[1.5, 0.2, 0.9], max_seconds=1.0)
    assert len(frames) == 2
    assert_frame_is(frames[0], expected_index(stamps, 0.2))
    assert_frame_is(frames[1], expected_index(stamps, 0.9))
    frames = read_video_frames(path, max_seconds=0.3)  # shorter than half a second: the middle
    assert len(frames) == 1
    assert_frame_is(frames[0], expected_index(stamps, 0.15))


def test_video_errors(media: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="no video stream"):
        read_video_frames(media["mp3"])
    stub = tmp_path / "1001_DFA_ANG_XX.flv"
    stub.write_text(LFS_STUB)
    with pytest.raises(MediaError, match="LFS"):
        read_video_frames(stub)
    empty = tmp_path / "empty.flv"
    empty.write_bytes(b"")
    with pytest.raises(MediaError, match="empty"):
        read_video_frames(empty)
    garbage = tmp_path / "garbage.flv"
    garbage.write_bytes(b"FLV\x01" + bytes(range(256)) * 8)
    with pytest.raises(MediaError, match="garbage.flv"):
        read_video_frames(garbage)


# ----------------------------------------------------------------------------------------------
# images


def test_read_image_and_resize_squashes(tmp_path: Path) -> None:
    rgb = np.zeros((360, 480, 3), np.uint8)
    rgb[:, :240] = (255, 0, 0)
    rgb[:, 240:] = (0, 0, 255)
    rgb[:, :60] = (0, 255, 0)  # a band that a centre crop to 360x360 would cut away
    path = tmp_path / "00000.jpg"
    Image.fromarray(rgb).save(path, quality=95)
    image = read_image(path)
    assert image.shape == (360, 480, 3) and image.dtype == np.uint8
    assert np.abs(image.astype(int) - rgb).mean() < 3
    small = resize_frame(image, 32)
    assert small.shape == (3, 32, 32) and small.dtype == np.uint8
    r, g, b = (small[c].astype(int) for c in range(3))
    assert (g[:, :3] > 200).all() and (r[:, :3] < 60).all()  # squashed: the band survives (1/8 of 32 = 4)
    assert (r[:, 6:14] > 200).all() and (b[:, 6:14] < 60).all()
    assert (b[:, 18:] > 200).all() and (r[:, 18:] < 60).all()


def test_resize_frame_antialiases() -> None:
    checker = ((np.indices((360, 480)).sum(axis=0) % 2) * 255).astype(np.uint8)
    small = resize_frame(np.repeat(checker[:, :, None], 3, axis=2), 32)
    assert abs(float(small.mean()) - 127.5) < 5 and float(small.std()) < 10  # not aliased to 0 / 255
    with pytest.raises(ValueError):
        resize_frame(np.zeros((8, 8), np.uint8), 4)


def test_read_image_converts_and_rejects(tmp_path: Path) -> None:
    gray_png = tmp_path / "gray.png"
    Image.fromarray(np.full((20, 30), 77, np.uint8)).save(gray_png)
    image = read_image(gray_png)
    assert image.shape == (20, 30, 3) and (image == 77).all()
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image at all")
    stub = tmp_path / "stub.jpg"
    stub.write_text(LFS_STUB)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    for path, reason in ((bad, "cannot read image"), (stub, "LFS"), (empty, "empty")):
        with pytest.raises(MediaError, match=reason):
            read_image(path)


# ----------------------------------------------------------------------------------------------
# precomputed features


def test_load_feature_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(1024, 128)).astype(np.float32)
    torch.save(torch.from_numpy(x)[None], tmp_path / "clip.pt")
    np.save(tmp_path / "clip.npy", x.astype(np.float64)[None, None])
    with (tmp_path / "clip.pkl").open("wb") as fh:
        pickle.dump(x[:257, :100].copy(), fh)
    with (tmp_path / "tensor.pkl").open("wb") as fh:
        pickle.dump(torch.from_numpy(x[:10]), fh)
    for name, expected in (("clip.pt", x), ("clip.npy", x), ("clip.pkl", x[:257, :100]), ("tensor.pkl", x[:10])):
        out = load_feature_file(tmp_path / name)
        assert out.dtype == np.float32
        np.testing.assert_allclose(out, expected, atol=1e-6)


def test_load_feature_file_rejects(tmp_path: Path) -> None:
    np.save(tmp_path / "cube.npy", np.zeros((2, 3, 4), np.float32))
    nan = np.zeros((4, 5), np.float32)
    nan[1, 2] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    with (tmp_path / "dict.pkl").open("wb") as fh:
        pickle.dump({"audio": [1, 2, 3]}, fh)
    (tmp_path / "stub.pt").write_text(LFS_STUB)
    (tmp_path / "broken.pt").write_bytes(b"this is not a torch file")
    (tmp_path / "feat.txt").write_text("1 2 3")
    cases = {
        "cube.npy": "2-D",
        "nan.npy": "NaN",
        "dict.pkl": "dict",
        "stub.pt": "LFS",
        "broken.pt": "cannot load",
        "feat.txt": "unknown feature file type",
    }
    for name, reason in cases.items():
        with pytest.raises(MediaError, match=reason) as info:
            load_feature_file(tmp_path / name)
        assert name in str(info.value)


@pytest.mark.parametrize("channels", [
    np.zeros((16000, 1), np.float32),                                     # all-zero mono
    np.stack([np.sin(np.arange(16000) / 5.0), -np.sin(np.arange(16000) / 5.0)], axis=1).astype(np.float32),
])
def test_silent_audio_is_a_media_error_naming_the_file(tmp_path: Path, channels: np.ndarray) -> None:
    """Issue 15.21: an all-zero WAV and a stereo WAV with L = -R were kept although the README says silent
    clips are detected; averaging the channels leaves nothing to learn from in both."""
    path = tmp_path / "1001_DFA_ANG_XX.wav"
    soundfile.write(path, channels, 16000)
    with pytest.raises(MediaError, match=r"1001_DFA_ANG_XX.wav: audio is silent"):
        read_audio(path, 16000)
    soundfile.write(path, channels[:, :1] + 0.01, 16000)
    assert read_audio(path, 16000).std() >= 0  # any signal is accepted


def test_truncation_compares_what_a_wav_holds_with_what_its_header_declares(tmp_path: Path) -> None:
    """Issue 15.21: libsndfile reads a WAV cut short without an error (it counts the frames it finds),
    so a cut is only visible against the RIFF header's data size."""
    from mmbench.data.media import truncation

    whole = tmp_path / "whole.wav"
    soundfile.write(whole, (0.5 * np.sin(np.arange(32000) / 10)).astype(np.float32), 16000)  # 2 s, PCM_16
    cut = tmp_path / "cut.wav"
    cut.write_bytes(whole.read_bytes()[: 44 + 32000])  # the header and 1 s of 16-bit samples
    assert truncation(whole) is None
    assert truncation(cut) == "holds 1.00 s of the 2.00 s of audio its header declares"
    assert soundfile.read(cut)[0].shape == (16000,)  # what decoding alone sees: a shorter clip
    slightly = tmp_path / "slightly.wav"
    slightly.write_bytes(whole.read_bytes()[: 44 + 62000])  # 97 % is there: a tolerance, not a defect
    assert truncation(slightly) is None
