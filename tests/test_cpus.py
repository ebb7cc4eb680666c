"""Default thread counts come from the cores this process may use (issue 15.1)."""

from __future__ import annotations

import pytest

from mmbench import cpus
from mmbench.scheduler.local import Slots


@pytest.mark.parametrize("files, limit", [
    ({"cpu.max": "150000 100000\n"}, 1.5),
    ({"cpu.max": "max 100000\n"}, None),
    ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2.0),
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ({}, None),
])
def test_the_cgroup_quota_is_read_from_v2_or_v1_files(tmp_path, files, limit):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cpus.cgroup_cpu_limit(tmp_path) == limit


@pytest.mark.parametrize("affinity, quota, jobs, threads", [
    (16, None, 1, 8),    # capped
    (16, 2.5, 1, 3),     # a container's quota of 2.5 CPUs: 3 threads, not 16
    (4, None, 2, 2),     # two jobs share four cores
    (2, None, 4, 1),     # never fewer than one
    (64, None, 4, 8),
])
def test_default_threads_follow_affinity_quota_and_jobs(monkeypatch, affinity, quota, jobs, threads):
    monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda pid: set(range(affinity)), raising=False)
    monkeypatch.setattr(cpus, "cgroup_cpu_limit", lambda: quota)
    assert cpus.default_threads(jobs) == threads


def test_the_local_scheduler_splits_the_available_cores_between_its_slots(monkeypatch):
    monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5}, raising=False)
    monkeypatch.setattr(cpus, "cgroup_cpu_limit", lambda: None)
    assert Slots.plan(jobs=3, gpus=None).threads == 2
    assert Slots.plan(jobs=None, gpus=["0", "1"], runs_per_gpu=3).threads == 1  # six packed GPU runs
