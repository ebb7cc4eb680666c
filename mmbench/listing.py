"""What `mmbench list` shows: the registered methods and datasets with their settings, defaults, choices,
profiles and requirements, and the core settings of every run (as rich tables, or as JSON)."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table

from mmbench import config as config_mod
from mmbench.registry import DATASETS, METHODS


def listing(which: str) -> list[dict[str, Any]]:
    if which == "core":
        return config_mod.core_keys()
    registry = METHODS if which == "methods" else DATASETS
    return [{"name": name, "description": cls.description, "citation": cls.citation, "version": cls.version,
             "settings": cls.hparams if which == "methods" else cls.params,
             "choices": {k: list(v) for k, v in cls.choices.items()}, "help": cls.help,
             **({"dataset_hparams": cls.dataset_hparams, "profiles": cls.profiles,
                 "modality_logits": cls.modality_logits} if which == "methods"
                else {"defaults": cls.defaults})}
            for name, cls in registry.infos()]


def core_table() -> Table:
    table = Table(title="core settings (every run; --set KEY=VALUE)", title_justify="left")
    for column in ("key", "type", "default", "range or choices", "meaning"):
        table.add_column(column, overflow="fold")
    for entry in config_mod.core_keys():
        allowed = entry.get("range") or "|".join(map(str, entry.get("choices", []))) or "-"
        table.add_row(*(escape(str(v)) for v in (entry["key"], entry["type"], entry["default"], allowed,
                                                   entry["help"])))
    return table


def registry_table(which: str) -> Table:
    registry = METHODS if which == "methods" else DATASETS
    table = Table(title=f"{which} ({len(registry.names())})", show_lines=True, title_justify="left")
    knob_header = "hyperparameters (default)" if which == "methods" else "settings (default)"
    for column in ("name", "description", "citation", knob_header):
        table.add_column(column, overflow="fold")
    for name, cls in registry.infos():
        knobs = cls.hparams if which == "methods" else cls.params
        table.add_row(*(escape(text) for text in (name, cls.description, cls.citation,
                                                  describe_knobs(cls, knobs))))
    return table


def describe_knobs(cls: type, knobs: dict[str, Any]) -> str:
    lines = []
    for key, default in knobs.items():
        choices = cls.choices.get(key)
        line = f"{key}={default}" + (f" ({'|'.join(map(str, choices))})" if choices else "")
        per_dataset = {d: v[key] for d, v in getattr(cls, "dataset_hparams", {}).items() if key in v}
        if per_dataset:
            line += " [" + ", ".join(f"{d}: {v}" for d, v in per_dataset.items()) + "]"
        if key in cls.help:
            line += f": {cls.help[key]}"
        lines.append(line)
    profiles = sorted(getattr(cls, "profiles", {}))
    if profiles:
        lines.append("profiles: benchmark, " + ", ".join(profiles))
    for profile in profiles:
        quirks = _profile_quirks(cls, cls.profiles[profile])
        if quirks:
            lines.append(f"--profile {profile} also sets: {quirks}")
    if hasattr(cls, "modality_logits"):
        kind = cls.modality_logits or "from the fusion head: fusion-slice (concat, sum) or none (film, gated)"
        lines.append(f"per-modality logits: {kind}")
    for key, spec in getattr(cls, "requires", {}).items():
        settings = ", ".join(f"{k}={v}" for k, v in spec.items() if k != "method")
        lines.append(f"requires run {key}: {spec.get('method')}" + (f" ({settings})" if settings else "")
                     + " of the same seed and settings, trained first")
    if getattr(cls, "trains", True) is False:
        lines.append("trains nothing itself: evaluates the model it builds once")
    protocol = getattr(cls, "defaults", {})
    if protocol:
        lines.append("benchmark protocol: " + ", ".join(f"{k}={v}" for k, v in protocol.items()))
    return "\n".join(lines) or "-"


# Settings that reproduce a released code's behaviour (not just its recipe), shown by `list`.
_BEHAVIOUR_KEYS = ("audio_frontend", "lr_step_at", "lr_milestones", "linear_init")


def _profile_quirks(cls: type, table: dict[str, dict[str, Any]]) -> str:
    """The method hyperparameters and behaviour keys a profile sets, e.g. `estimator=official`."""
    values: dict[str, dict[str, list[str]]] = {}
    for dataset, settings in table.items():
        for key, value in settings.items():
            if key in cls.hparams or key in _BEHAVIOUR_KEYS:
                values.setdefault(key, {}).setdefault(str(value), []).append(dataset)
    parts = []
    for key, by_value in values.items():
        if len(by_value) == 1:
            parts.append(f"{key}={next(iter(by_value))}")
        else:
            parts.append(f"{key}=" + ", ".join(f"{v} ({', '.join(d)})" for v, d in by_value.items()))
    return "; ".join(parts)
