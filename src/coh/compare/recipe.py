"""Reading a ``coh compare`` recipe: a YAML file, or a preset by name (``configs/compare/``).

A recipe is a YAML mapping of ``CompareConfig`` keys. ``extends: OTHER.yaml`` (relative to the
file) starts from another recipe: mappings merge key by key, lists and values are replaced.
``methods:`` items and ``judge:`` are nested specs (``MethodSpec``, ``JudgeSpec``): a name or a
spec string, or a mapping of their keys. Keys and values go through ``coh.options``, the checks
every stage's options get (``coerce_options``: unknown keys, YAML reading ``1e-5`` as text;
``check_fields`` in each class: types, ranges), and errors name the recipe.
"""

from __future__ import annotations

from pathlib import Path

from coh.compare.config import CompareConfig, JudgeSpec, MethodSpec
from coh.data.errors import describe
from coh.options import coerce_options, parse_yaml

PRESETS_DIR = Path(__file__).resolve().parents[3] / "configs" / "compare"  # in a source checkout


def load_recipe(path: str | Path, overrides: dict | None = None) -> CompareConfig:
    """The config of a recipe file or preset, with ``overrides`` (recipe keys) on top."""
    file = resolve_recipe(path)
    values = _merge(_read(file), overrides or {})
    return config_from_dict(values, f"recipe {file}")


def config_from_dict(values: dict, where: str = "recipe") -> CompareConfig:
    """A config from a recipe's mapping; a ``ValueError`` naming ``where`` and the key at fault."""
    values = coerce_options(CompareConfig, dict(values), where)
    try:
        if "methods" in values:
            if not isinstance(values["methods"], list):
                raise ValueError(f"methods: expected a list of methods, got {describe(values['methods'])}")
            values["methods"] = [MethodSpec(**coerce_options(MethodSpec, m, f"methods[{i}]")) if isinstance(m, dict)
                                 else MethodSpec(str(m)) for i, m in enumerate(values["methods"])]
        if "judge" in values:
            values["judge"] = _judge(values["judge"])
        if isinstance(values.get("seeds"), int):
            values["seeds"] = [values["seeds"]]
        return CompareConfig(**values)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def _judge(value: object) -> JudgeSpec:
    if isinstance(value, str):
        return JudgeSpec(spec=value)
    if value is None or isinstance(value, dict):
        return JudgeSpec(**coerce_options(JudgeSpec, value or {}, "judge"))
    raise ValueError(f"judge: expected a spec string or a mapping of {sorted(JudgeSpec.__dataclass_fields__)}, "
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
    """A recipe file's mapping with the ones it extends merged under it."""
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
    loaded = {str(k).replace("-", "_"): v for k, v in loaded.items()}
    parent = loaded.pop("extends", None)
    if parent is None:
        return loaded
    if not isinstance(parent, str):
        raise ValueError(f"{where}: extends: expected a recipe file name, got {describe(parent)}")
    if not (path.parent / parent).is_file():
        raise ValueError(f"{where}: extends: no such recipe file {path.parent / parent}")
    return _merge(_read(path.parent / parent, (*seen, path.resolve())), loaded)



def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out
