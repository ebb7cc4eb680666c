"""From the command line's scheduling options to a backend: `local`, `slurm` or `ray`."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mmbench.config import ConfigError
from mmbench.scheduler import BACKENDS, Backend, Event

if TYPE_CHECKING:
    from mmbench.scheduler.slurm import SlurmOptions

# --slurm KEY=VALUE: these keys are mmbench's; any other key goes to sbatch (account, qos, constraint, ...).
SLURM_KEYS = {"partition": str, "time_min": int, "gpus_per_task": int, "cpus_per_task": int, "mem_gb": float,
              "array_parallelism": int, "signal_delay_s": int, "max_requeues": int}


@dataclass(frozen=True)
class SchedulingOptions:
    backend: str = "local"
    jobs: int | None = None
    gpus: list[str] | None = None  # None: every visible GPU
    runs_per_gpu: int | None = None
    gpu_mem: float | None = None
    retries: int = 0
    slurm: dict[str, str] = field(default_factory=dict)
    wait: bool = True
    address: str | None = None

    def validate(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"--backend {self.backend}: choose one of {', '.join(BACKENDS)}")
        if (self.jobs is not None and self.jobs < 1) or (self.runs_per_gpu is not None and self.runs_per_gpu < 1):
            raise ConfigError("--jobs and --runs-per-gpu must be at least 1")
        if self.retries < 0:
            raise ConfigError("--retries must be at least 0")
        if self.gpu_mem is not None and (self.gpu_mem <= 0 or self.runs_per_gpu is not None):
            raise ConfigError("--gpu-mem takes a positive number of GB, and replaces --runs-per-gpu (give one)")
        if self.slurm and self.backend != "slurm":
            raise ConfigError("--slurm settings are for --backend slurm")
        if not self.wait and self.backend != "slurm":
            raise ConfigError("--no-wait is for --backend slurm (jobs that outlive the command)")
        if self.address and self.backend != "ray":
            raise ConfigError("--address is for --backend ray")
        if self.backend != "local" and self.gpu_mem is not None:
            raise ConfigError(f"--gpu-mem is for --backend local; with {self.backend} give --runs-per-gpu (ray) "
                              "or --slurm gpus_per_task=N (slurm)")
        if self.backend == "slurm" and self.runs_per_gpu is not None:
            raise ConfigError("--runs-per-gpu: SLURM gives each run whole GPUs (--slurm gpus_per_task=N); "
                              "pack runs with --backend local or ray")
        if self.backend != "local" and (self.jobs is not None or self.gpus is not None):
            raise ConfigError(f"--jobs and --gpus are for --backend local; {self.backend} allocates the devices")
        if self.backend == "local" and self.gpus and self.jobs is not None:
            raise ConfigError("--jobs is for machines without GPUs; with GPUs use --runs-per-gpu or --gpu-mem")
        slurm_options(self.slurm)


def slurm_options(settings: dict[str, str]) -> SlurmOptions:
    from mmbench.scheduler.slurm import SlurmOptions

    known, extra = {}, {}
    for key, text in settings.items():
        if key not in SLURM_KEYS:
            extra[key] = text
            continue
        try:
            known[key] = SLURM_KEYS[key](text)
        except ValueError:
            raise ConfigError(f"--slurm {key}={text}: expected {SLURM_KEYS[key].__name__}") from None
    return SlurmOptions(**known, extra=extra)


def parse_key_values(items: list[str] | None, option: str) -> dict[str, str]:
    pairs = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{option} {item!r}: expected KEY=VALUE, e.g. {option} partition=gpu")
        pairs[key.strip().replace("-", "_")] = value.strip()
    return pairs


def visible_gpus() -> list[str]:
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def gpu_memory_gb(ids: list[str]) -> dict[str, float]:
    """Total memory of each GPU, from nvidia-smi (no CUDA context is created in this process)."""
    if shutil.which("nvidia-smi") is None:
        raise ConfigError("--gpu-mem: cannot read the GPUs' memory (no nvidia-smi); give --runs-per-gpu instead")
    listing = subprocess.run(["nvidia-smi", "--query-gpu=index,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=60)
    totals = {}
    for line in listing.stdout.splitlines():
        index, _, mib = line.partition(",")
        if index.strip().isdigit() and mib.strip().replace(".", "").isdigit():
            totals[index.strip()] = float(mib) / 1024
    missing = [g for g in ids if g not in totals]
    if missing:
        raise ConfigError(f"--gpu-mem: nvidia-smi lists no GPU {','.join(missing)}; give --runs-per-gpu instead")
    return totals


def make_backend(options: SchedulingOptions, out: Path, plugins: list[str] | None,
                 on_event: Event) -> tuple[Backend, str]:
    """The backend and a line saying where the runs go."""
    if options.backend == "slurm":
        from mmbench.scheduler.slurm import SlurmScheduler

        slurm = slurm_options(options.slurm)
        where = (f"SLURM ({slurm.partition or 'default partition'}, per run: {slurm.gpus_per_task} GPU(s), "
                 f"{slurm.cpus_per_task} CPU(s), {slurm.time_min} min per job before a requeue)")
        return SlurmScheduler(out, slurm, options.retries, plugins, on_event, wait=options.wait), where
    if options.backend == "ray":
        from mmbench.scheduler.ray_cluster import RayScheduler

        init = {} if options.address else {"_node_ip_address": "127.0.0.1"}
        backend = RayScheduler(out, runs_per_gpu=options.runs_per_gpu or 1, address=options.address,
                               retries=options.retries, plugins=plugins, on_event=on_event, init_kwargs=init)
        return backend, f"Ray ({options.address or 'a local cluster on 127.0.0.1'})"
    return local_backend(options, out, plugins, on_event)


def local_backend(options: SchedulingOptions, out: Path, plugins: list[str] | None,
                  on_event: Event) -> tuple[Backend, str]:
    from mmbench.scheduler.local import LocalScheduler, Slots

    gpus = options.gpus if options.gpus is not None else visible_gpus()
    if options.gpu_mem is not None and not gpus:
        raise ConfigError("--gpu-mem: no GPU is visible; on a CPU machine use --jobs")
    totals = gpu_memory_gb(gpus) if options.gpu_mem is not None else None
    try:
        slots = Slots.plan(options.jobs, gpus, options.runs_per_gpu, options.gpu_mem, totals)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if gpus:
        per_gpu = {g: slots.devices.count(g) for g in gpus}
        where = "GPUs " + ", ".join(f"{g} x {k}" for g, k in per_gpu.items())
    else:
        where = f"{len(slots.devices)} CPU job(s) x {slots.threads} thread(s)"
    return LocalScheduler(out, slots, retries=options.retries, plugins=plugins, on_event=on_event), where


def one_slot(options: SchedulingOptions) -> bool:
    """True when the runs would go one at a time through the local backend anyway."""
    if options.backend != "local" or options.gpu_mem is not None:
        return False
    gpus = options.gpus if options.gpus is not None else visible_gpus()
    if gpus:
        return len(gpus) == 1 and (options.runs_per_gpu or 1) == 1
    return (options.jobs or 1) == 1
