"""Method and dataset registries: one decorator to register, discovery, "did you mean".

Built-in plugins live in the folders `methods/` and `datasets/` (installed as
`mmbench.methods` / `mmbench.datasets`); third-party ones come from the entry-point groups
`mmbench.methods` / `mmbench.datasets` or from `--plugin path/to/file.py`.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import importlib.util
import pkgutil
import sys
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

T = TypeVar("T", bound=type)


class Plugin:
    """What every registered method and dataset declares about itself."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    citation: ClassVar[str] = ""
    #: Bump when a change alters the numbers this plugin produces (it enters the run_id).
    version: ClassVar[int] = 1
    #: Allowed values of a hyperparameter or knob, where they are a closed set.
    choices: ClassVar[dict[str, tuple]] = {}
    #: One line per hyperparameter or knob, for `mmbench list`.
    help: ClassVar[dict[str, str]] = {}

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        """Raise ConfigError for settings this plugin cannot honour."""


class UnknownNameError(LookupError):
    """Raised for a method or dataset name that is not registered."""


class PluginError(ImportError):
    """Raised when a plugin file or entry point cannot be loaded."""


def normalize(name: str) -> str:
    """`OGM_GE`, `ogm-ge` and `ogm ge` are the same name."""
    return name.strip().lower().replace("_", "-").replace(" ", "-")


class Registry(Generic[T]):
    def __init__(self, kind: str, builtin_package: str, entry_point_group: str) -> None:
        self.kind = kind
        self._builtin_package = builtin_package
        self._group = entry_point_group
        self._items: dict[str, T] = {}
        self._discovered = False

    def register(self, cls: T) -> T:
        name = normalize(getattr(cls, "name", "") or "")
        if not name:
            raise TypeError(f"{cls.__qualname__} needs a class attribute `name` to be registered")
        existing = self._items.get(name)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise ValueError(
                f"{self.kind} name {name!r} is registered twice: "
                f"{existing.__module__}.{existing.__qualname__} and {cls.__module__}.{cls.__qualname__}"
            )
        cls.name = name
        self._items[name] = cls
        return cls

    def discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        package = importlib.import_module(self._builtin_package)
        for module in pkgutil.iter_modules(package.__path__):
            if not module.name.startswith("_"):
                importlib.import_module(f"{self._builtin_package}.{module.name}")
        for entry_point in importlib.metadata.entry_points(group=self._group):
            try:
                loaded = entry_point.load()
            except Exception as exc:  # a broken third-party plugin must not hide the built-ins
                raise PluginError(
                    f"entry point {entry_point.name!r} in group {self._group} failed to load: {exc}"
                ) from exc
            if isinstance(loaded, type) and normalize(getattr(loaded, "name", "")) not in self._items:
                self.register(loaded)

    def get(self, name: str) -> T:
        self.discover()
        key = normalize(name)
        if key in self._items:
            return self._items[key]
        close = difflib.get_close_matches(key, list(self._items), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise UnknownNameError(
            f"unknown {self.kind} {name!r}: {hint}known: {', '.join(sorted(self._items))} "
            f"(see `mmbench list {self.kind}s`)"
        )

    def names(self) -> list[str]:
        self.discover()
        return sorted(self._items)

    def items(self) -> list[tuple[str, T]]:
        return [(name, self._items[name]) for name in self.names()]


METHODS: Registry = Registry("method", "mmbench.methods", "mmbench.methods")
DATASETS: Registry = Registry("dataset", "mmbench.datasets", "mmbench.datasets")


def register_method(cls: T) -> T:
    """Class decorator: make a `Method` subclass available by its `name`."""
    return METHODS.register(cls)


def register_dataset(cls: T) -> T:
    """Class decorator: make a `Dataset` subclass available by its `name`."""
    return DATASETS.register(cls)


def load_plugin(path: str | Path) -> None:
    """Import a plugin file; its decorators register what it defines."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise PluginError(f"--plugin {path}: no such file; give the path of a .py file")
    module_name = f"mmbench_plugin_{path.stem}_{abs(hash(str(path))):x}"
    if module_name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise PluginError(f"--plugin {path}: not an importable Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise PluginError(f"--plugin {path}: importing it failed: {type(exc).__name__}: {exc}") from exc


def load_plugins(paths: list[str] | None) -> None:
    for path in paths or []:
        load_plugin(path)

