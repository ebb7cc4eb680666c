"""Method and dataset registries: one decorator to register, discovery, "did you mean".

Built-in plugins live in the folders `methods/` and `datasets/` (installed as
`mmbench.methods` / `mmbench.datasets`); third-party ones come from the entry-point groups
`mmbench.methods` / `mmbench.datasets` or from `--plugin path/to/file.py`.

Importing the built-in plugins imports torch, torchaudio, PyAV and scipy (seconds), which `mmbench list`,
a typo and a config error do not need: what a plugin declares about itself (name, defaults, choices,
help) is kept in a catalogue in the user's cache folder, keyed by a hash of the package's sources, and a
plugin module is imported only when its class is asked for (`Registry.get`). Any change to a source
file changes the key, and the next command imports the plugins and writes a new catalogue.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import math
import os
import pkgutil
import sys
import tempfile
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


class PluginInfo:
    """What a plugin declares (its public class attributes), read from the catalogue without importing
    the plugin's module; `Registry.get` imports the module for the class itself."""

    def __init__(self, module: str, attributes: dict[str, Any]) -> None:
        self.module = module
        self.__dict__.update(attributes)


class _NotALiteral(TypeError):
    pass


def encode_literal(value: Any) -> Any:
    """JSON for a Python literal that decodes to an equal value of the same types (tuples stay tuples,
    infinities stay floats); raises _NotALiteral for anything else."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"float": repr(value)}
    if isinstance(value, (list, tuple)):
        return {"list" if isinstance(value, list) else "tuple": [encode_literal(v) for v in value]}
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"dict": {k: encode_literal(v) for k, v in value.items()}}
    raise _NotALiteral(type(value).__name__)


def decode_literal(data: Any) -> Any:
    if not isinstance(data, dict):
        return data
    (kind, body), = data.items()
    if kind == "float":
        return float(body)
    if kind == "dict":
        return {k: decode_literal(v) for k, v in body.items()}
    items = [decode_literal(v) for v in body]
    return items if kind == "list" else tuple(items)


def declared_attributes(cls: type) -> dict[str, Any] | None:
    """A plugin class's public data attributes (its own and inherited) and docstring, encoded; None if
    one of them is not a literal (such a plugin is imported by every command that lists it)."""
    declared = {}
    for attr in [*(a for a in dir(cls) if not a.startswith("_")), "__doc__"]:
        value = getattr(cls, attr)
        if callable(value) or isinstance(value, (property, classmethod, staticmethod)):
            continue
        try:
            declared[attr] = encode_literal(value)
        except _NotALiteral:
            return None
    return declared


def source_key(folders: list[Path]) -> str:
    """Hash of every Python source under `folders` (contents, not times: a checkout keeps no mtimes)."""
    digest = hashlib.sha256()
    for folder in folders:
        for path in sorted(folder.rglob("*.py")):
            digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:20]


KEEP_CATALOGUES = 8


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def catalogue_folder() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mmbench" / "plugins"


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
        self._infos: dict[str, PluginInfo] = {}
        self._discovered = False

    def register(self, cls: T) -> T:
        name = normalize(getattr(cls, "name", "") or "")
        if not name:
            raise TypeError(f"{cls.__qualname__} needs a class attribute `name` to be registered")
        existing = self._items.get(name)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            self._twice(name, f"{existing.__module__}.{existing.__qualname__}", cls)
        if name in self._infos and self._infos[name].module != cls.__module__:
            self._twice(name, self._infos[name].module, cls)
        cls.name = name
        self._items[name] = cls
        return cls

    def _twice(self, name: str, first: str, cls: type) -> None:
        raise ValueError(f"{self.kind} name {name!r} is registered twice: {first} and "
                         f"{cls.__module__}.{cls.__qualname__}")

    def discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        if not self._read_catalogue():
            self._import_builtins()
        for entry_point in importlib.metadata.entry_points(group=self._group):
            try:
                loaded = entry_point.load()
            except Exception as exc:  # a broken third-party plugin must not hide the built-ins
                raise PluginError(
                    f"entry point {entry_point.name!r} in group {self._group} failed to load: {exc}"
                ) from exc
            if isinstance(loaded, type) and normalize(getattr(loaded, "name", "")) not in self._items:
                self.register(loaded)

    def _builtin_modules(self) -> list[str]:
        package = importlib.import_module(self._builtin_package)
        return [f"{self._builtin_package}.{m.name}" for m in pkgutil.iter_modules(package.__path__)
                if not m.name.startswith("_")]

    def _catalogue_path(self) -> Path:
        package = importlib.import_module(self._builtin_package)
        folders = [Path(__file__).parent, *map(Path, package.__path__)]
        return catalogue_folder() / f"{self.kind}s-{source_key(folders)}.json"

    def _read_catalogue(self) -> bool:
        try:
            entries = json.loads(self._catalogue_path().read_text())
        except (OSError, ValueError):
            return False
        for name, entry in entries.items():
            if name in self._items and self._items[name].__module__ != entry["module"]:
                self._twice(name, entry["module"], self._items[name])
            if name not in self._items:
                attributes = {attr: decode_literal(data) for attr, data in entry["attributes"].items()}
                self._infos[name] = PluginInfo(entry["module"], attributes)
        return True

    def _import_builtins(self) -> None:
        for module in self._builtin_modules():
            importlib.import_module(module)
        entries = {}
        for name, cls in self._items.items():
            attributes = declared_attributes(cls)
            if attributes is None or not cls.__module__.startswith(self._builtin_package + "."):
                continue  # not described by literals, or not built in: imported by every command
            entries[name] = {"module": cls.__module__, "attributes": attributes}
        if not entries:  # modules imported before by another registry instance registered nothing here
            return
        path = self._catalogue_path()
        _write_atomically(path, json.dumps(entries, indent=1, sort_keys=True))
        # one catalogue per version of the sources; keep a few (several installs may share the folder)
        older = sorted(path.parent.glob(f"{self.kind}s-*.json"), key=_mtime, reverse=True)[KEEP_CATALOGUES:]
        for stale in older:
            with contextlib.suppress(OSError):
                stale.unlink()

    def info(self, name: str) -> Any:
        """What the plugin `name` declares: its class if imported, else its catalogue entry."""
        key = self._key(name)
        return self._items.get(key) or self._infos[key]

    def get(self, name: str) -> T:
        """The plugin class `name`; imports its module if only its catalogue entry was read."""
        key = self._key(name)
        if key not in self._items:
            importlib.import_module(self._infos[key].module)
        if key not in self._items:
            raise PluginError(f"{self._infos[key].module} no longer defines {self.kind} {key!r}; "
                              f"delete {catalogue_folder()} and run the command again")
        return self._items[key]

    def _key(self, name: str) -> str:
        self.discover()
        key = normalize(name)
        if key in self._items or key in self._infos:
            return key
        known = sorted({*self._items, *self._infos})
        close = difflib.get_close_matches(key, known, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise UnknownNameError(
            f"unknown {self.kind} {name!r}: {hint}known: {', '.join(known)} "
            f"(see `mmbench list {self.kind}s`)"
        )

    def names(self) -> list[str]:
        self.discover()
        return sorted({*self._items, *self._infos})

    def infos(self) -> list[tuple[str, Any]]:
        """(name, what it declares) for every plugin, without importing any."""
        return [(name, self.info(name)) for name in self.names()]

    def items(self) -> list[tuple[str, T]]:
        """(name, class) for every plugin; imports them all."""
        return [(name, self.get(name)) for name in self.names()]


METHODS: Registry = Registry("method", "mmbench.methods", "mmbench.methods")
DATASETS: Registry = Registry("dataset", "mmbench.datasets", "mmbench.datasets")


def register_method(cls: T) -> T:
    """Class decorator: make a `Method` subclass available by its `name`."""
    return METHODS.register(cls)


def register_dataset(cls: T) -> T:
    """Class decorator: make a `Dataset` subclass available by its `name`."""
    return DATASETS.register(cls)


def _write_atomically(path: Path, text: str) -> None:
    """Best effort: a read-only or full cache folder only costs the next command its speed."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as tmp:
            tmp.write(text)
        os.replace(tmp.name, path)
    except OSError:
        with contextlib.suppress(OSError, NameError):
            os.unlink(tmp.name)


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

