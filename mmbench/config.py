"""The typed run config: defaults < dataset defaults < method profile < YAML < --set.

Every key is validated: an unknown key or a value of the wrong type fails with one line
that names the key and the valid choices. The resolved config is hashed into the run_id.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import itertools
import json
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from mmbench import ENGINE_VERSION, RESULT_SCHEMA_VERSION
from mmbench.registry import DATASETS, METHODS, normalize


class ConfigError(ValueError):
    """A config key or value is invalid; the message is one line for the user."""


class DataError(ValueError):
    """The data on disk cannot be used as asked; the message is one line naming the path and the fix."""


Profile = Literal["benchmark", "official"]


@dataclass(frozen=True)
class RunConfig:
    """Everything that decides what one training run computes (plus two execution knobs)."""

    method: str = "joint"
    dataset: str = "synthetic"
    seed: int = 0
    profile: Profile = "benchmark"
    epochs: int = 100
    batch_size: int = 64
    eval_batch_size: int = 256
    optimizer: Literal["sgd", "adamw", "adam", "adagrad"] = "sgd"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_step: int = 70
    lr_gamma: float = 0.1
    lr_milestones: tuple[int, ...] = ()
    lr_step_at: Literal["epoch_end", "epoch_start"] = "epoch_end"
    encoder: Literal["resnet18", "small_cnn"] = "resnet18"
    encoder_width: int = 32
    fusion: Literal["concat", "sum", "film", "gated"] = "concat"
    linear_init: Literal["xavier", "pytorch"] = "xavier"
    val_fraction: float = 0.1
    split_seed: int = 0
    bf16: bool | Literal["auto"] = "auto"
    channels_last: bool | Literal["auto"] = "auto"
    deterministic: bool = True
    drop_last: bool = False
    eval_every: int = 1
    # Execution only: recorded with the results but not part of the run's identity.
    device: str = "auto"
    num_threads: int = 0
    log: str = "none"
    checkpoint_every_s: float = 60.0
    compile: Literal["none", "default", "reduce-overhead"] = "none"
    keep_weights: bool = False
    hparams: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # a config read back from JSON holds a list; the hash and the schedule must not depend on that
        object.__setattr__(self, "lr_milestones", tuple(self.lr_milestones))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def uses(self, key: str, device_type: str) -> bool:
        """Whether an AUTO_ON_CUDA key is on for a device: `auto` is on for a CUDA run of the benchmark
        profile; bf16 autocast is on CUDA only."""
        value = getattr(self, key)
        on = device_type == "cuda" and self.profile == "benchmark" if value == "auto" else bool(value)
        return on and (key != "bf16" or device_type == "cuda")

    def identity(self) -> dict[str, Any]:
        """The part of the config that decides the numbers (hashed into run_id)."""
        identity = {k: v for k, v in self.to_dict().items() if k not in EXECUTION_KEYS}
        # Keys that came later hash as the settings they replaced, so that finished runs keep their run_ids.
        for key, legacy in _LEGACY_IDENTITY.items():
            identity[key] = legacy.get(identity[key], identity[key])
        drop_keys_at_default(identity)
        # Where the data lives (a path on this machine) does not change what a run computes.
        location = getattr(DATASETS.info(self.dataset), "location_params", ())
        identity["data"] = {k: v for k, v in self.data.items() if k not in location}
        return identity

    def code_version(self) -> str:
        method = METHODS.info(self.method)
        dataset = DATASETS.info(self.dataset)
        return f"engine{ENGINE_VERSION}/{method.name}@{method.version}/{dataset.name}@{dataset.version}"

    @property
    def run_id(self) -> str:
        payload = {
            "config": self.identity(),
            "schema": RESULT_SCHEMA_VERSION,
            "code": self.code_version(),
        }
        canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


EXECUTION_KEYS = frozenset({"device", "num_threads", "log", "checkpoint_every_s", "compile", "keep_weights"})
#: true, false or auto (on for a CUDA run of the benchmark profile, off elsewhere).
AUTO_ON_CUDA = ("bf16", "channels_last")
# bf16 and channels_last were plain booleans with default false, and every finished run was a CPU run or
# said so explicitly: `auto` hashes as the old default, an explicit false as a new value.
_LEGACY_IDENTITY: dict[str, dict[Any, Any]] = {key: {"auto": False, False: "off"} for key in AUTO_ON_CUDA}
# Added after runs were stored: at their defaults they compute what those runs did.
_OMITTED_AT_DEFAULT = ("drop_last", "lr_milestones", "eval_every")
FIXED_KEYS = frozenset({"method", "dataset", "seed", "hparams", "data"})


def drop_keys_at_default(settings: dict[str, Any]) -> dict[str, Any]:
    """Remove (in place) the keys added after runs were stored that are at their defaults, so that a
    stored config (JSON: lists for tuples) and a new one compare and hash alike."""
    for key in _OMITTED_AT_DEFAULT:
        if key in settings and _plain(settings[key]) == _plain(CORE_FIELDS[key].default):
            del settings[key]
    return settings


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
CORE_FIELDS = {f.name: f for f in dataclasses.fields(RunConfig) if f.name not in FIXED_KEYS}
_CORE_TYPES = typing.get_type_hints(RunConfig)


# Ranges of the numeric core keys, checked wherever a value comes from (profile, YAML, --set), so that
# an untrainable setting fails before anything runs: (lowest, highest, whether lowest itself is allowed).
CORE_RANGES: dict[str, tuple[float, float, bool]] = {
    "epochs": (1, math.inf, True), "batch_size": (1, math.inf, True), "eval_batch_size": (1, math.inf, True),
    "lr": (0, math.inf, False), "momentum": (0, 1, True), "weight_decay": (0, math.inf, True),
    "lr_step": (1, math.inf, True), "lr_gamma": (0, 1, False), "encoder_width": (1, math.inf, True),
    "val_fraction": (0, 0.9, False), "split_seed": (0, math.inf, True), "num_threads": (0, math.inf, True),
    "checkpoint_every_s": (0, math.inf, True), "eval_every": (1, math.inf, True),
}


CORE_HELP: dict[str, str] = {
    "profile": "benchmark (one protocol for every method) or a method's own profile, e.g. official",
    "epochs": "training epochs", "batch_size": "training batch size", "eval_batch_size": "batch size of evaluation",
    "optimizer": "optimiser of the model", "lr": "learning rate", "momentum": "SGD momentum",
    "weight_decay": "L2 weight decay", "lr_step": "the learning rate falls every lr_step epochs ...",
    "lr_gamma": "... by this factor",
    "lr_milestones": "epochs at which the learning rate falls by lr_gamma, e.g. [30, 60] (MultiStepLR; replaces "
                     "lr_step when given)",
    "lr_step_at": "whether the schedule steps at the end or the start of an epoch",
    "encoder": "audio and visual encoder", "encoder_width": "channels of the small_cnn encoder",
    "fusion": "how the two modalities' features are fused", "linear_init": "initialisation of linear layers",
    "val_fraction": "share of the training split held out for validation (model selection)",
    "split_seed": "seed of the train/validation split (fixed across run seeds)",
    "bf16": "bfloat16 autocast on CUDA (auto: on for the benchmark profile on CUDA; it changes the numbers)",
    "channels_last": "channels-last memory format on CUDA (auto: on for the benchmark profile on CUDA)",
    "deterministic": "deterministic algorithms (bit-identical reruns); false lets cuDNN pick the fastest kernels",
    "eval_every": "evaluate validation and test every this many epochs and after the last one (model selection "
                  "sees only those epochs)",
    "drop_last": "skip the last short training batch of each epoch (static shapes; the official codes keep it)",
    "device": "auto, cpu, cuda or cuda:N (not part of the run's identity)",
    "num_threads": "CPU threads; 0 = the cores this process may use, at most 8 (not part of the run's identity)",
    "log": "also log to none, tensorboard, wandb or mlflow (several with commas; not part of the run's identity)",
    "checkpoint_every_s": "write the resume checkpoint after an epoch once this many seconds passed since the last "
                          "one (0 = every epoch); a resumed run ends identical either way (not part of the run's "
                          "identity)",
    "compile": "torch.compile the encoders: none, default or reduce-overhead (CUDA graphs); not part of the "
               "run's identity",
    "keep_weights": "also store the selected model's weights (weights/.../<run_id>.pt), as for a run another "
                    "method loads (set for those by itself; not part of the run's identity)",
}


def core_keys() -> list[dict[str, Any]]:
    """The core settings for `mmbench list core`: type, default, range or choices, meaning."""
    keys = []
    for name, f in CORE_FIELDS.items():
        choices = ("auto", "true", "false") if name in AUTO_ON_CUDA else _choices_of(_CORE_TYPES[name])
        entry = {"key": name, "type": "choice" if choices else type(f.default).__name__, "default": f.default,
                 "help": CORE_HELP.get(name, ""), "identity": name not in EXECUTION_KEYS}
        if choices:
            entry["choices"] = list(choices)
        if name in CORE_RANGES:
            low, high, low_allowed = CORE_RANGES[name]
            entry["range"] = f"{'[' if low_allowed else '('}{low:g}, {high:g}]" if math.isfinite(high) else \
                f"{'>=' if low_allowed else '>'} {low:g}"
        keys.append(entry)
    return keys


def check_range(key: str, value: float, low: float, high: float, low_allowed: bool = True) -> None:
    """ConfigError unless low <(=) value <= high and finite (the upper bound is inclusive)."""
    if not math.isfinite(value) or value > high or value < low or (value == low and not low_allowed):
        above = f">= {low:g}" if low_allowed else f"> {low:g}"
        span = above if math.isinf(high) else f"{above} and <= {high:g}"
        raise ConfigError(f"{key}={value!r} is out of range: it must be {span}")


def _choices_of(annotation: Any) -> tuple | None:
    return typing.get_args(annotation) if typing.get_origin(annotation) is Literal else None


def coerce(key: str, value: Any, default: Any, choices: tuple | None = None) -> Any:
    """Convert `value` (a string from --set, or a YAML scalar) to the type of `default`."""
    expected = type(default)
    try:
        if isinstance(default, bool):
            value = _to_bool(value)
        elif isinstance(default, int):
            value = _to_int(value)
        elif isinstance(default, float):
            value = float(value) if not isinstance(value, bool) else _bad()
        elif isinstance(default, str):
            value = str(value) if isinstance(value, (str, int, float)) else _bad()
        elif default is None or isinstance(default, (list, tuple, dict)):
            value = yaml.safe_load(value) if isinstance(value, str) else value
    except (TypeError, ValueError):
        raise ConfigError(
            f"{key}={value!r} is not a valid {expected.__name__}"
            + (f"; choices: {', '.join(map(str, choices))}" if choices else "")
        ) from None
    if choices and value not in choices:
        raise ConfigError(f"{key}={value!r} is not allowed; choices: {', '.join(map(str, choices))}")
    return value


def _bad() -> Any:
    raise TypeError


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"true", "1", "yes", "on"}:
        return True
    if text in {"false", "0", "no", "off"}:
        return False
    raise ValueError


def _auto_or_bool(key: str, value: Any) -> bool | str:
    if str(value).strip().lower() == "auto":
        return "auto"
    try:
        return _to_bool(value)
    except ValueError:
        raise ConfigError(f"{key}={value!r} is not allowed; choices: auto, true, false") from None


def _milestones(value: Any) -> tuple[int, ...]:
    """`[30, 60]` (YAML, or a string from --set; `30,60` too) as increasing positive epochs."""
    error = ConfigError(f"lr_milestones={value!r}: expected increasing epochs >= 1, e.g. --set lr_milestones=[30,60]")
    try:
        parsed = yaml.safe_load(value if "[" in value else f"[{value}]") if isinstance(value, str) else value
        epochs = tuple(_to_int(v) for v in (parsed if isinstance(parsed, (list, tuple)) else [parsed]))
    except (TypeError, ValueError, yaml.YAMLError):
        raise error from None
    if any(e < 1 for e in epochs) or list(epochs) != sorted(set(epochs)):
        raise error
    return epochs


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError
        return int(value)
    return int(str(value).strip())


def parse_sets(pairs: list[str] | None) -> dict[str, str]:
    """`["alpha=0.5", "epochs=3"]` -> {"alpha": "0.5", "epochs": "3"}."""
    parsed: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {pair!r}: expected key=value, e.g. --set lr=0.01")
        parsed[key.strip()] = value.strip()
    return parsed


def read_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """A YAML file whose top level is a mapping; `what` names it in errors (e.g. "--config x.yaml")."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what}: no such file")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"{what}: not UTF-8 text; save it as UTF-8") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{what}: expected a mapping of keys to values at the top level")
    return loaded


def load_yaml(path: str | Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    loaded = read_mapping(path, f"--config {path}")
    # Nested `hparams:` / `data:` sections are the same keys as flat ones.
    flat = {k: v for k, v in loaded.items() if k not in ("hparams", "data")}
    for section in ("hparams", "data"):
        nested = loaded.get(section) or {}
        if not isinstance(nested, dict):
            raise ConfigError(f"--config {path}: `{section}` must be a mapping")
        flat.update({f"{section}.{k}": v for k, v in nested.items()})
    return flat


def _profile_overrides(method_cls: type, profile: str, dataset: str) -> dict[str, Any]:
    if profile == "benchmark":
        return dict(method_cls.profiles.get("benchmark", {}).get(dataset, {}))
    table = method_cls.profiles.get(profile)
    if table is None:
        raise ConfigError(f"--profile {profile}: method {method_cls.name} has no such profile; "
                          f"choices: benchmark, {', '.join(method_cls.profiles) or '(none)'}")
    if dataset not in table:
        raise ConfigError(
            f"--profile {profile}: method {method_cls.name} has no {profile} settings for dataset "
            f"{dataset} (its paper did not run it); use --profile benchmark"
        )
    return dict(table[dataset])


def resolve(
    method: str,
    dataset: str,
    seed: int = 0,
    profile: str = "benchmark",
    overrides: dict[str, Any] | None = None,
) -> RunConfig:
    """Merge every layer and validate. `overrides` = YAML values, then --set values, in order."""
    method_cls = METHODS.info(method)
    dataset_cls = DATASETS.info(dataset)
    profile = coerce("profile", profile, "benchmark", _choices_of(_CORE_TYPES["profile"]))
    core = {name: f.default for name, f in CORE_FIELDS.items() if f.default is not dataclasses.MISSING}
    core["profile"] = profile
    hparams = dict(method_cls.hparams)
    hparams.update(method_cls.dataset_hparams.get(dataset_cls.name, {}))
    data = dict(dataset_cls.params)

    layers = [
        ("dataset defaults", dataset_cls.defaults),
        (f"{profile} profile", _profile_overrides(method_cls, profile, dataset_cls.name)),
        ("override", overrides or {}),
    ]
    for _, layer in layers:
        for key, value in layer.items():
            _apply(key, value, core, hparams, data, method_cls, dataset_cls)

    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", core["device"]):
        raise ConfigError(f"device={core['device']!r} is not allowed; choices: auto, cpu, cuda, cuda:N")
    if core["log"] != "none":
        from mmbench.train.trackers import parse_log

        parse_log(core["log"])
    seed = _to_int(seed)
    check_range("seed", seed, 0, math.inf)
    cfg = RunConfig(method=method_cls.name, dataset=dataset_cls.name, seed=seed,
                    hparams=hparams, data=data, **core)
    # the checks that are code need the plugins themselves (and torch); every check above does not
    METHODS.get(method).check_config(cfg)
    DATASETS.get(dataset).check_config(cfg)
    return cfg


def _apply(key: str, value: Any, core: dict, hparams: dict, data: dict, method_cls: type,
           dataset_cls: type) -> None:
    section, _, bare = key.rpartition(".")
    if section and section not in ("hparams", "method", "data", "dataset"):
        if normalize(section) not in METHODS.names():
            raise ConfigError(f"unknown key {key!r}: a prefix is a method name, method., hparams. or data.")
        if normalize(section) != method_cls.name:
            return  # a setting for another method of the same command
        section = ""  # `joint.lr=...`: any setting (core, method or data), for that method's runs only
    if section == "" and bare in AUTO_ON_CUDA:
        core[bare] = _auto_or_bool(bare, value)
    elif section == "" and bare == "lr_milestones":
        core[bare] = _milestones(value)
    elif section == "" and bare in CORE_FIELDS:
        core[bare] = coerce(bare, value, CORE_FIELDS[bare].default, _choices_of(_CORE_TYPES[bare]))
        if bare in CORE_RANGES:
            check_range(bare, core[bare], *CORE_RANGES[bare])
    elif section in ("", "hparams", "method") and bare in method_cls.hparams:
        hparams[bare] = coerce(bare, value, method_cls.hparams[bare], method_cls.choices.get(bare))
    elif section in ("", "data", "dataset") and bare in dataset_cls.params:
        data[bare] = coerce(bare, value, dataset_cls.params[bare], dataset_cls.choices.get(bare))
    else:
        valid = sorted(set(CORE_FIELDS) | set(method_cls.hparams) | set(dataset_cls.params))
        close = difflib.get_close_matches(bare, valid, n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ConfigError(
            f"unknown key {key!r} for method {method_cls.name} on dataset {dataset_cls.name}: "
            f"{hint}valid keys: {', '.join(valid)}"
        )


def to_yaml(cfg: RunConfig, sources: dict[str, str] | None = None) -> str:
    """The resolved config in the form `--config` reads back as it is (method, dataset, seed, the core
    keys, then `hparams:` and `data:` sections); `sources` adds `# from ...` after each value."""
    def line(key: str, value: Any, indent: str = "") -> str:
        text = yaml.safe_dump({key: value}, default_flow_style=True, width=1000).strip()
        if text.startswith("{") and text.endswith("}"):
            text = text[1:-1]
        note = (sources or {}).get(key)
        return f"{indent}{text}" + (f"  # {note}" if note else "")

    data = cfg.to_dict()
    lines = [line(k, data[k]) for k in data if k not in ("hparams", "data")]
    for section in ("hparams", "data"):
        lines.append(f"{section}:" + ("" if data[section] else " {}"))
        lines += [line(k, v, "  ") for k, v in data[section].items()]
    return "\n".join(lines) + "\n"


def from_stored(config: dict[str, Any]) -> dict[str, Any]:
    """A stored config (a run's config_json or config.yaml) as flat values for `resolve`: method,
    dataset, seed and profile apart, hparams and data as `hparams.` / `data.` keys."""
    flat = {k: v for k, v in config.items() if k not in ("hparams", "data")}
    for section in ("hparams", "data"):
        flat.update({f"{section}.{k}": v for k, v in (config.get(section) or {}).items()})
    return flat


def sources(method: str, dataset: str, profile: str, layers: list[tuple[str, dict[str, Any]]]) -> dict[str, str]:
    """Which layer set each key last: default, dataset defaults, the method's defaults, the profile,
    then `layers` in order (e.g. the config file, then --set)."""
    method_cls, dataset_cls = METHODS.info(method), DATASETS.info(dataset)
    found = {name: "default" for name in CORE_FIELDS}
    found.update({k: f"{method_cls.name} default" for k in method_cls.hparams})
    found.update({k: f"{method_cls.name} default for {dataset_cls.name}"
                  for k in method_cls.dataset_hparams.get(dataset_cls.name, {})})
    found.update({k: f"{dataset_cls.name} default" for k in dataset_cls.params})
    found.update({k: f"{dataset_cls.name} protocol" for k in dataset_cls.defaults})
    found["profile"] = "default" if profile == "benchmark" else "--profile"
    layers = [(f"{profile} profile", _profile_overrides(method_cls, profile, dataset_cls.name)), *layers]
    for name, layer in layers:
        for key in layer:
            section, _, bare = key.rpartition(".")
            if section in ("", "hparams", "method", "data", "dataset") or normalize(section) == method_cls.name:
                found[bare] = name
    return found


def expand(
    methods: list[str],
    dataset: str,
    seeds: list[int],
    profile: str,
    overrides: dict[str, Any],
) -> list[RunConfig]:
    """One resolved config per (method, seed), methods in the order given. With several
    methods, a bare hyperparameter goes to the methods that have it (or use `method.key`)."""
    configs = []
    for method in methods:
        others = {k for m in methods if m != method for k in METHODS.info(m).hparams}
        own = set(METHODS.info(method).hparams) | set(CORE_FIELDS) | set(DATASETS.info(dataset).params)
        mine = {k: v for k, v in overrides.items() if k in own or k not in others}
        configs += [resolve(method, dataset, s, profile, mine) for s in seeds]
    return configs


def parse_seeds(text: str | list | int) -> list[int]:
    """`"0,1,2"`, `"0-4"`, `[0, 1]` or `3` -> a list of distinct seeds."""
    if isinstance(text, int) and not isinstance(text, bool):
        return [text]
    items = text if isinstance(text, list) else str(text).replace(" ", "").split(",")
    seeds: list[int] = []
    for item in items:
        try:
            if isinstance(item, str) and "-" in item.strip("-"):
                lo, hi = item.split("-")
                seeds.extend(range(_to_int(lo), _to_int(hi) + 1))
            else:
                seeds.append(_to_int(item))  # 1.5 is refused, not truncated
        except (TypeError, ValueError):
            raise ConfigError(f"--seeds {text!r}: expected integers like 0,1,2 or a range 0-4") from None
    if any(seed < 0 for seed in seeds):
        raise ConfigError(f"--seeds {text!r}: seeds are 0 or more")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {text!r}: give at least one seed and no seed twice")
    return seeds


def normalized_names(text: str) -> list[str]:
    return [normalize(n) for n in text.split(",") if n.strip()]


def names_in(value: Any, what: str) -> list[str]:
    """A YAML name list (`[joint, opm]`, `joint`, or `joint,opm`); ConfigError naming `what` otherwise."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(n, str) and n.strip() for n in items) or not items:
        raise ConfigError(f"{what} must list at least one name, e.g. [joint, opm]")
    return [n.strip() for n in items]


SWEEP_KEYS = ("methods", "datasets", "seeds", "profile", "set", "grid", "slurm")


@dataclass(frozen=True)
class SweepConfig:
    """A grid of runs: methods x datasets x per-method hyperparameter grids x seeds.

        methods: [joint, ogm-ge]
        datasets: [synthetic]
        seeds: [0, 1, 2]            # or "0-4"
        profile: benchmark          # optional
        set: {epochs: 20}           # optional, overrides for every run
        grid: {ogm-ge: {alpha: [0.1, 0.5, 0.8]}, "*": {lr: [0.01, 0.02]}}   # optional
        slurm: {partition: gpu, time_min: 120}   # optional, used by --backend slurm (--slurm wins)
    """

    methods: tuple[str, ...]
    datasets: tuple[str, ...]
    seeds: tuple[int, ...]
    profile: str = "benchmark"
    overrides: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, dict[str, list]] = field(default_factory=dict)
    slurm: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path, sets: dict[str, Any] | None = None) -> SweepConfig:
        data = read_mapping(path, f"sweep file {path}")
        for key in data:
            if key not in SWEEP_KEYS:
                close = difflib.get_close_matches(str(key), SWEEP_KEYS, n=1)
                raise ConfigError(f"sweep file {path}: unknown key {key!r}"
                                  + (f"; did you mean {close[0]}?" if close else f"; keys: {', '.join(SWEEP_KEYS)}"))
        names = {key: names_in(data.get(key), f"sweep file {path}: `{key}`") for key in ("methods", "datasets")}
        grid = data.get("grid") or {}
        if not isinstance(grid, dict) or not all(isinstance(v, dict) for v in grid.values()):
            raise ConfigError(f"sweep file {path}: `grid` maps a method name (or \"*\") to {{key: [values]}}")
        for method, axes in grid.items():
            if method != "*" and normalize(method) not in [normalize(m) for m in names["methods"]]:
                raise ConfigError(f"sweep file {path}: grid for {method!r}, which is not in `methods`")
            for key, values in axes.items():
                if not isinstance(values, list) or not values:
                    raise ConfigError(f"sweep file {path}: grid {method}.{key} must be a non-empty list")
        overrides = data.get("set") or {}
        if not isinstance(overrides, dict):
            raise ConfigError(f"sweep file {path}: `set` maps keys to values, e.g. {{epochs: 20, lr: 0.01}}")
        overrides = {**overrides, **(sets or {})}
        slurm = data.get("slurm") or {}
        if not isinstance(slurm, dict):
            raise ConfigError(f"sweep file {path}: `slurm` maps settings to values, e.g. {{partition: gpu}}")
        return cls(tuple(normalize(m) for m in names["methods"]), tuple(normalize(d) for d in names["datasets"]),
                   tuple(parse_seeds(data.get("seeds", "0,1,2"))), str(data.get("profile", "benchmark")),
                   overrides, {normalize(k) if k != "*" else k: v for k, v in grid.items()},
                   {str(k).replace("-", "_"): str(v) for k, v in slurm.items()})

    def expand(self) -> list[RunConfig]:
        """Every run, resolved and validated (a bad key fails here, before anything starts)."""
        configs: list[RunConfig] = []
        for dataset in self.datasets:
            for method in self.methods:
                axes = {**self.grid.get("*", {}), **self.grid.get(method, {})}
                for values in itertools.product(*axes.values()):
                    combo = dict(zip(axes, values, strict=True))
                    configs += expand([method], dataset, list(self.seeds), self.profile,
                                      {**self.overrides, **combo})
        seen: dict[str, RunConfig] = {}
        for cfg in configs:
            seen.setdefault(cfg.run_id, cfg)  # identical grid points are one run
        return list(seen.values())
