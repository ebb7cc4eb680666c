from __future__ import annotations

import json
import math
import textwrap

import pytest
import torch

from mmbench.config import ConfigError, resolve
from mmbench.data import carve_validation
from mmbench.method import Method
from mmbench.registry import DATASETS, METHODS, Registry, UnknownNameError, load_plugin, normalize
from mmbench.train import engine

from .conftest import TINY, tiny_config, training_setup


def test_builtin_plugins_are_discovered():
    assert {"joint", "unimodal"} <= set(METHODS.names())
    assert "synthetic" in DATASETS.names()


@pytest.mark.parametrize("spelling", ["unimodal", "UNIMODAL", " unimodal "])
def test_names_are_normalized(spelling):
    assert METHODS.get(spelling).name == "unimodal"


def test_underscore_and_dash_are_the_same_name():
    assert normalize("ogm_ge") == normalize("OGM-GE") == "ogm-ge"


def test_unknown_name_suggests_closest_match():
    with pytest.raises(UnknownNameError, match=r"did you mean joint\?"):
        METHODS.get("jiont")
    with pytest.raises(UnknownNameError, match="synthetic"):
        DATASETS.get("synthetc")


def test_registering_a_different_class_under_a_taken_name_fails():
    registry = Registry("method", "mmbench.methods", "mmbench.methods.none")

    class A(Method):
        name = "dup"

    class B(Method):
        name = "DUP"

    registry.register(A)
    with pytest.raises(ValueError, match="registered twice"):
        registry.register(B)


def _one_step(cfg):
    """Build the method's model and run its epoch-start hook, exactly one training step and one evaluation."""
    dataset, splits, ctx, model, optimizer = training_setup(cfg)
    method = ctx.method
    method.on_epoch_start(model, ctx)
    before = [p.detach().clone() for p in model.parameters()]
    batch = next(splits.train.batches(cfg.batch_size, ctx.generator("order")))
    out, loss = method.train_step(model, dataset.transform(batch, True, ctx.generator("augment")),
                                  optimizer, ctx)
    changed = any(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
    evaluation = engine.evaluate(model, method, dataset, splits.test, ctx)
    return out, loss, changed, evaluation


FUSIONS = ["concat", "sum", "film", "gated"]


def _supports(method: str, fusion: str) -> bool:
    fusions = METHODS.get(method).fusions
    return fusions is None or fusion in fusions


@pytest.mark.parametrize("method, fusion", [(m, f) for m in METHODS.names() for f in FUSIONS
                                            if _supports(m, f) and METHODS.get(m).trains])
def test_every_method_builds_and_trains_one_step(method, fusion):
    cfg = tiny_config(method, fusion=fusion)
    out, loss, changed, evaluation = _one_step(cfg)
    assert torch.isfinite(loss)
    assert out.logits.shape[1] == 6
    assert changed, "one optimiser step must change some parameter"
    assert 0.0 <= evaluation.metrics["acc"] <= 1.0
    assert evaluation.logits.shape == (TINY["n_test"], 6)


def test_resnet18_encoders_train_one_step():
    out, loss, changed, _ = _one_step(tiny_config(encoder="resnet18", image_size=32, audio_size=32, n_test=16))
    assert changed and torch.isfinite(loss) and out.feat_a.shape[1] == 512


@pytest.mark.parametrize("method, fusion", [(m, f) for m in METHODS.names() for f in FUSIONS
                                            if not _supports(m, f)])
def test_unsupported_fusions_are_refused_in_one_line(method, fusion):
    with pytest.raises(ConfigError, match=f"method {method} is defined for fusion .*not fusion={fusion}"):
        tiny_config(method, fusion=fusion)


def _prepared_fixture(name, tmp_path):
    """A small dataset in the adapter's first layout, prepared; the overrides that read it."""
    from mmbench.data import cache, fixtures

    if name not in fixtures.LAYOUTS:
        pytest.skip(f"{name} needs files on disk and has no fixture writer")
    root = tmp_path / name
    fixtures.write_fixture(name, fixtures.LAYOUTS[name][0], root, clips=24, seed=0)
    overrides = {"root": str(root), "cache": str(tmp_path / "cache"), "cache_image_size": 16, "image_size": 16}
    params = resolve("joint", name, overrides=overrides).data
    cls = DATASETS.get(name)
    scan = cls.scan(root, params)
    cache.prepare(scan, cls.preprocessing(params, scan), cls.cache_dir(params, root), root, {})
    return overrides


@pytest.mark.parametrize("name", DATASETS.names())
def test_every_dataset_loads_with_consistent_shapes(name, tmp_path):
    overrides = TINY if name == "synthetic" else _prepared_fixture(name, tmp_path)
    cfg = resolve("joint", name, overrides=overrides)
    dataset = DATASETS.get(name)(cfg)
    splits = dataset.load()
    for split in (splits.train, splits.test):
        batch = dataset.transform(next(split.batches(4)), train=False, generator=torch.Generator())
        assert batch.audio.ndim == 4 and batch.audio.shape[1] == 1 and batch.audio.dtype == torch.float32
        assert batch.visual.ndim == 5 and batch.visual.shape[2] == 3
        assert int(split.y.max()) < len(dataset.classes)
    train, val = carve_validation(splits.train, 0.1, 0)
    assert not set(train.sample_id) & set(val.sample_id)
    assert not set(val.sample_id) & set(splits.test.sample_id)


def test_plugin_file_registers_a_method(tmp_path):
    plugin = tmp_path / "my_plugin.py"
    plugin.write_text(textwrap.dedent('''
        import torch.nn.functional as F
        from mmbench.method import Method
        from mmbench.registry import register_method

        @register_method
        class LabelSmoothed(Method):
            name = "label_smoothed"
            description = "joint training with label smoothing"
            hparams = {"smoothing": 0.1}

            def loss(self, out, batch, ctx):
                return F.cross_entropy(out.logits, batch.y, label_smoothing=self.hp["smoothing"])
    '''))
    load_plugin(plugin)
    assert METHODS.get("label-smoothed").hparams == {"smoothing": 0.1}
    cfg = tiny_config("label-smoothed", smoothing=0.2)
    assert cfg.hparams["smoothing"] == 0.2
    _, loss, changed, _ = _one_step(cfg)
    assert changed and torch.isfinite(loss)


def test_missing_plugin_file_is_a_clear_error(tmp_path):
    with pytest.raises(ImportError, match="no such file"):
        load_plugin(tmp_path / "absent.py")


def test_entry_points_are_discovered(monkeypatch):
    class FromEntryPoint(Method):
        name = "from-entry-point"

    class FakeEntryPoint:
        name = "from-entry-point"

        def load(self):
            return FromEntryPoint

    registry = Registry("method", "mmbench.methods", "mmbench.methods")
    monkeypatch.setattr("importlib.metadata.entry_points",
                        lambda group: [FakeEntryPoint()] if group == "mmbench.methods" else [])
    assert registry.get("From_Entry_Point") is FromEntryPoint


# Input-pipeline knobs that every real dataset adapter takes under these names.
@pytest.mark.parametrize("method", METHODS.names())
def test_profiles_and_dataset_defaults_use_known_keys(method):
    from mmbench.config import CORE_FIELDS

    cls = METHODS.get(method)
    for profile, per_dataset in cls.profiles.items():
        assert profile in ("benchmark", "official")
        for dataset, values in per_dataset.items():
            unknown = set(values) - set(CORE_FIELDS) - set(DATASETS.get(dataset).params) - set(cls.hparams)
            assert not unknown, f"{method} {profile} profile for {dataset}: unknown keys {unknown}"
    for dataset, values in cls.dataset_hparams.items():
        assert set(values) <= set(cls.hparams), f"{method} per-dataset values for {dataset}"
    assert set(cls.choices) <= set(cls.hparams) and set(cls.help) <= set(cls.hparams)


@pytest.mark.parametrize("registry", [METHODS, DATASETS], ids=["methods", "datasets"])
def test_the_catalogue_declares_what_the_classes_declare(registry, tmp_path, monkeypatch):
    """`list` and config checks read the catalogue instead of importing the plugins (issue 15.2): every
    built-in plugin must be in it, with attributes equal in value and type to its class's."""
    import subprocess
    import sys

    from mmbench.registry import declared_attributes

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    # a fresh process finds no catalogue: it imports the modules and writes one
    subprocess.run([sys.executable, "-c", f"from mmbench.registry import {registry.kind.upper()}S as r; r.names()"],
                   check=True)
    reader = Registry(registry.kind, registry._builtin_package, "none")
    reader.discover()
    builtins = {name: cls for name, cls in registry.items() if cls.__module__.startswith(registry._builtin_package)}
    assert not reader._items and sorted(reader._infos) == sorted(builtins)  # other tests register plugins
    for name, cls in builtins.items():
        info = reader.info(name)
        assert info.module == cls.__module__
        for attr in declared_attributes(cls):
            value = getattr(cls, attr)
            assert getattr(info, attr) == value and type(getattr(info, attr)) is type(value), (name, attr)


def test_literals_survive_the_catalogue_with_their_types():
    from mmbench.registry import decode_literal, encode_literal

    value = {"r": (1, math.inf), "c": ("a", "b"), "l": [1.5, -math.inf, None, True], "d": {"x": {"y": ()}}}
    decoded = decode_literal(json.loads(json.dumps(encode_literal(value))))
    assert decoded == value and isinstance(decoded["r"], tuple) and isinstance(decoded["l"], list)
    assert type(decoded["l"][3]) is bool and decoded["r"][1] == math.inf


def test_any_change_to_a_source_file_changes_the_catalogue_key(tmp_path):
    """A stale catalogue must never be read: the key hashes contents, so an edit of the same size that
    keeps the modification time still changes it."""
    import os

    from mmbench.registry import source_key

    plugin = tmp_path / "pkg" / "mine.py"
    plugin.parent.mkdir()
    plugin.write_text("hparams = {'lr': 0.1}\n")
    before, stat = source_key([tmp_path / "pkg"]), plugin.stat()
    plugin.write_text("hparams = {'lr': 0.2}\n")
    os.utime(plugin, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert source_key([tmp_path / "pkg"]) != before


def test_an_entry_whose_module_no_longer_defines_it_says_what_to_do():
    from mmbench.registry import PluginError, PluginInfo

    registry = Registry("method", "mmbench.methods", "none")
    registry._discovered = True
    registry._infos["gone"] = PluginInfo("mmbench.methods.joint", {"name": "gone"})
    with pytest.raises(PluginError, match="no longer defines method 'gone'; delete .*plugins and run"):
        registry.get("gone")
