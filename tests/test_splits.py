"""Split helpers of the on-disk datasets: frame sampling, group-disjoint hold-out, list parsing."""

from collections import Counter

import pytest
import torch

from mmbench.config import resolve
from mmbench.data import DataError, TensorSplit, carve_validation, hold_out_groups
from mmbench.data.cache import pick_frames
from mmbench.datasets.cremad import read_clip_list
from mmbench.datasets.kinetics_sounds import KS_CLASSES, parse_list


def test_centre_frames_at_evaluation():
    count = torch.tensor([10, 3, 1, 2])
    picks = pick_frames(count, 3, None)
    # Segments of 10/3 frames: centres 1.67, 5, 8.33 -> 1, 5, 8.
    assert picks[0].tolist() == [1, 5, 8]
    assert picks[1].tolist() == [0, 1, 2]
    assert picks[2].tolist() == [0, 0, 0]  # one candidate: repeated
    assert picks[3].tolist() == [0, 1, 1]


def test_random_frames_stay_inside_their_segment_and_cover_it():
    count = torch.full((5000,), 10)
    picks = pick_frames(count, 3, torch.Generator().manual_seed(0))
    for k, (lo, hi) in enumerate([(0, 3), (3, 6), (6, 9)]):
        seen = set(picks[:, k].tolist())
        assert seen <= set(range(lo, hi + 1)) and len(seen) >= 3
    assert (picks[:, 0] <= picks[:, 1]).all() and (picks[:, 1] <= picks[:, 2]).all()


def _split(groups, labels):
    n = len(groups)
    return TensorSplit(torch.zeros(n, 1, 2, 2), torch.zeros(n, 1, 3, 2, 2), torch.tensor(labels),
                       [f"c{i}" for i in range(n)], groups)


def test_group_hold_out_is_disjoint_and_near_the_fraction():
    groups = [f"actor{i % 20}" for i in range(400)]
    split = _split(groups, [i % 6 for i in range(400)])
    train, held = carve_validation(split, 0.1, split_seed=3, by_group=True)
    assert set(train.group_id).isdisjoint(held.group_id)
    assert len(train) + len(held) == 400
    assert 20 <= len(held) <= 60  # whole actors of 20 clips each, about 10 %
    again = carve_validation(split, 0.1, split_seed=3, by_group=True)[1]
    assert again.sample_id == held.sample_id
    assert carve_validation(split, 0.1, split_seed=4, by_group=True)[1].sample_id != held.sample_id


def test_group_hold_out_needs_two_groups():
    with pytest.raises(DataError, match="at least 2 groups"):
        hold_out_groups(["a"] * 5, 0.2, 0)
    held = hold_out_groups(["a"] * 5 + ["b"], 0.9, 0)
    assert len(held) == 1  # never every group


def test_stratified_hold_out_keeps_class_shares():
    split = _split([f"g{i}" for i in range(600)], [0] * 300 + [1] * 200 + [2] * 100)
    _, held = carve_validation(split, 0.1, split_seed=0)
    assert Counter(held.y.tolist()) == {0: 30, 1: 20, 2: 10}


def test_data_location_is_not_part_of_the_run_id(tmp_path):
    a = resolve("joint", "cremad", overrides={"root": str(tmp_path / "a"), "cache": str(tmp_path)})
    b = resolve("joint", "cremad", overrides={"root": str(tmp_path / "b")})
    c = resolve("joint", "cremad", overrides={"root": str(tmp_path / "a"), "audio_frontend": "fbank"})
    d = resolve("joint", "cremad", overrides={"frames": 2})
    assert a.run_id == b.run_id
    assert c.run_id != a.run_id and d.run_id != a.run_id


def test_cremad_split_csv_with_bom_crlf_and_header(tmp_path):
    plain = tmp_path / "train.csv"
    plain.write_bytes(b"1088_IOM_NEU_XX,NEU\r\n1001_DFA_ANG_XX,ANG\r\n")
    header = tmp_path / "test.csv"
    header.write_bytes("\ufeffname,label\n1002_TIE_SAD_XX,SAD\n\n".encode())
    assert read_clip_list(plain) == ["1088_IOM_NEU_XX", "1001_DFA_ANG_XX"]
    assert read_clip_list(header) == ["1002_TIE_SAD_XX"]


def test_kinetics_sounds_lists_in_every_format(tmp_path):
    comma = tmp_path / "my_train.txt"
    comma.write_bytes(b"--4-0ihtnBU_000010_000020,10,4\r\n-00nar1nEPc_000000_000010,10,13\r\n")
    space = tmp_path / "train.txt"
    space.write_text("abc_000001_000011 10 7\nxyz_5 30\n")
    names = tmp_path / "train.csv"
    names.write_text('youtube_id,label\nabc,playing organ\n"x,y",tickling\n')
    assert parse_list(comma) == [("--4-0ihtnBU_000010_000020", "4"), ("-00nar1nEPc_000000_000010", "13")]
    assert parse_list(space) == [("abc_000001_000011", "7"), ("xyz_5", "30")]
    assert parse_list(names) == [("abc", "playing organ"), ("x,y", "tickling")]
    assert KS_CLASSES[4] == "dribbling basketball" and KS_CLASSES[13] == "playing harmonica"
    assert list(KS_CLASSES) == sorted(KS_CLASSES) and len(KS_CLASSES) == 31
