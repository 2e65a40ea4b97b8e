"""Reading a ``coh compare`` recipe: a YAML file, or a preset by name (``configs/compare/``).

A recipe is a YAML mapping of ``CompareConfig`` keys. ``extends: OTHER.yaml`` (relative to the
file) starts from another recipe: mappings merge key by key, lists and values are replaced.
``methods:`` items and ``scorer:`` are nested specs (``MethodSpec``, ``ScorerSpec``): a name or a
spec string, or a mapping of their keys. Keys and values go through ``coh.options``, the checks
every stage's options get (``coerce_options``: unknown keys, YAML reading ``1e-5`` as text;
``check_fields`` in each class: types, ranges), and errors name the recipe. The old spellings
``judge:`` and ``judge_fraction:`` are still read, with a deprecation note, for one release.
"""

from __future__ import annotations

import sys
from pathlib import Path

from coh.compare.config import CompareConfig, MethodSpec, ScorerSpec
from coh.data.errors import describe
from coh.options import coerce_options, parse_yaml

PRESETS_DIR = Path(__file__).resolve().parents[3] / "configs" / "compare"  # in a source checkout
RENAMED = {"judge": "scorer", "judge_fraction": "scorer_fraction"}  # old key -> new key


def load_recipe(path: str | Path, overrides: dict | None = None) -> CompareConfig:
    """The config of a recipe file or preset, with ``overrides`` (recipe keys) on top."""
    file = resolve_recipe(path)
    values = _merge(_read(file), _renamed(overrides or {}, "overrides"))
    return config_from_dict(values, f"recipe {file}")


def config_from_dict(values: dict, where: str = "recipe") -> CompareConfig:
    """A config from a recipe's mapping; a ``ValueError`` naming ``where`` and the key at fault."""
    values = coerce_options(CompareConfig, _renamed(dict(values), where), where)
    try:
        if "methods" in values:
            if not isinstance(values["methods"], list):
                raise ValueError(f"methods: expected a list of methods, got {describe(values['methods'])}")
            values["methods"] = [MethodSpec(**coerce_options(MethodSpec, m, f"methods[{i}]")) if isinstance(m, dict)
                                 else MethodSpec(str(m)) for i, m in enumerate(values["methods"])]
        if "scorer" in values:
            values["scorer"] = _scorer(values["scorer"])
        if isinstance(values.get("seeds"), int):
            values["seeds"] = [values["seeds"]]
        return CompareConfig(**values)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def _scorer(value: object) -> ScorerSpec:
    if isinstance(value, str):
        return ScorerSpec(spec=value)
    if value is None or isinstance(value, dict):
        return ScorerSpec(**coerce_options(ScorerSpec, value or {}, "scorer"))
    raise ValueError(f"scorer: expected a spec string or a mapping of {sorted(ScorerSpec.__dataclass_fields__)}, "
                     f"got {describe(value)}")


def resolve_recipe(path: str | Path) -> Path:
    """``path`` if it is a file, else the preset of that name."""
    p = Path(path)
    if p.exists():
        return p
    preset = PRESETS_DIR / f"{path}.yaml"
    if preset.exists():
        return preset
    names = sorted(q.stem for q in PRESETS_DIR.glob("*.yaml")) if PRESETS_DIR.exists() else []
    raise FileNotFoundError(f"{path}: no such recipe file" + (f" or preset (presets: {', '.join(names)})" if names else ""))


def _read(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """A recipe file's mapping with the ones it extends merged under it, old keys renamed."""
    if path.resolve() in seen:
        raise ValueError(f"{path}: 'extends' loops back to itself")
    where = f"recipe {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{where}: cannot read it ({e})") from None
    loaded = parse_yaml(text, where)
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise ValueError(f"{where}: expected a mapping of option names to values, got {describe(loaded)}")
    loaded = _renamed({str(k).replace("-", "_"): v for k, v in loaded.items()}, where)
    parent = loaded.pop("extends", None)
    if parent is None:
        return loaded
    if not isinstance(parent, str):
        raise ValueError(f"{where}: extends: expected a recipe file name, got {describe(parent)}")
    if not (path.parent / parent).is_file():
        raise ValueError(f"{where}: extends: no such recipe file {path.parent / parent}")
    return _merge(_read(path.parent / parent, (*seen, path.resolve())), loaded)


def _renamed(values: dict, where: str) -> dict:
    """``values`` with the old key spellings (``RENAMED``) under their new names, and a note."""
    for old, new in RENAMED.items():
        if old in values:
            if new in values:
                raise ValueError(f"{where}: give '{new}' only ('{old}' is its old spelling)")
            print(f"coh: {where}: '{old}' is deprecated and will be removed in the next release; use '{new}'",
                  file=sys.stderr)
            values = {(new if k == old else k): v for k, v in values.items()}
    return values


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out
