"""lm-evaluation-harness on a model in this process (lm-eval's ``hf`` model) or on any
OpenAI-compatible server (``local-completions``: ``coh serve``, vLLM, ...), one command line for both.

The default tasks are the original's alignment-tax check, zero-shot: wsc, piqa, winogrande,
openbookqa, logiqa. They need their data from the hub; offline, point ``include_path`` at a
folder of task YAMLs over local files (``dataset_path: json`` with ``dataset_kwargs.data_files``).

Both paths tokenize alike: requests go to the server as token ids encoded by the model's own
tokenizer, and BOS is added exactly when that tokenizer adds it by itself, in process and over
HTTP, so the two paths score the same tokens.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from coh.eval.config import HarnessConfig
from coh.eval.report import EvalResult


def completions_url(base_url: str) -> str:
    """lm-eval posts to exactly the URL it is given: ``.../v1`` becomes ``.../v1/completions``."""
    url = base_url.rstrip("/")
    return url if url.endswith("/completions") else url + "/completions"


def served_model_name(base_url: str, api_key_env: str | None) -> str:
    """The first model id the server lists at ``/v1/models`` (``coh judge``'s lookup)."""
    import httpx

    from coh.judge.systems import SystemSpec, served_model

    root = base_url.rstrip("/").removesuffix("/completions")
    with httpx.Client(timeout=30) as client:
        try:
            return served_model(client, SystemSpec("server", url=root, api_key_env=api_key_env))
        except ValueError as e:
            raise ValueError(f"--base-url {base_url}: cannot learn the served model: {e}; or give --served-model") from None


def check_reachable(base_url: str) -> None:
    """Something answers at ``base_url`` (any HTTP status will do), else a ValueError saying so."""
    import httpx

    from coh.judge.systems import SystemSpec, unreachable

    url = base_url.rstrip("/").removesuffix("/completions") + "/models"
    try:
        httpx.get(url, timeout=30)
    except (httpx.HTTPError, httpx.InvalidURL) as e:
        raise ValueError(f"--base-url {base_url}: {unreachable(SystemSpec('server', url=url), url, e)}") from None


def check_tokenizer(path: str) -> None:
    """A tokenizer folder (or a model folder) that exists must hold tokenizer files."""
    from coh.models import check_tokenizer_folder

    check_tokenizer_folder(path, f"--tokenizer '{path}'")


def adds_bos(tokenizer_name: str, trust_remote_code: bool = False) -> bool:
    """Whether the tokenizer adds BOS by itself (lm-eval's ``add_bos_token`` must say the same)."""
    from coh.data.tokenize import tokenizer_adds_bos
    from coh.models import load_tokenizer

    return tokenizer_adds_bos(load_tokenizer(tokenizer_name, trust_remote_code, f"tokenizer '{tokenizer_name}'"))


def lm_eval_model(cfg: HarnessConfig) -> tuple[str, dict]:
    """lm-eval's model type and ``model_args`` for the configured path."""
    from coh.models import check_model_folder, check_tokenizer_folder, pick_device

    if cfg.model is not None:
        check_model_folder(cfg.model, f"--model '{cfg.model}'")
        check_tokenizer_folder(cfg.model, f"--model '{cfg.model}'", "model")
    if cfg.tokenizer is not None:
        check_tokenizer(cfg.tokenizer)
    if cfg.model is not None:
        model_type = "hf"
        args = {"pretrained": cfg.model, "device": pick_device(cfg.device), "dtype": "auto",
                "add_bos_token": adds_bos(cfg.tokenizer or cfg.model, cfg.trust_remote_code)}
        if cfg.tokenizer:
            args["tokenizer"] = cfg.tokenizer
    else:
        model_type = "local-completions"
        args = {"base_url": completions_url(cfg.base_url),
                "model": cfg.served_model or served_model_name(cfg.base_url, cfg.api_key_env),
                "num_concurrent": cfg.num_concurrent, "max_retries": 3, "seed": cfg.seed}
        if cfg.tokenizer:
            args.update(tokenizer_backend="huggingface", tokenizer=cfg.tokenizer, tokenized_requests=True,
                        add_bos_token=adds_bos(cfg.tokenizer, cfg.trust_remote_code))
        else:
            args["tokenizer_backend"] = "auto"  # lm-eval uses the server's tokenizer endpoints when there are any
        if cfg.api_key_env:
            key = os.environ.get(cfg.api_key_env)
            if not key:
                raise ValueError(f"--api-key-env {cfg.api_key_env}: the variable is not set")
            args["auth_token"] = key
    if cfg.max_length:
        args["max_length"] = cfg.max_length
    if cfg.trust_remote_code:  # lm-eval loads the model (hf) or the tokenizer (local-completions) with it
        args["trust_remote_code"] = True
    return model_type, {**args, **cfg.extra}


def task_manager(tasks: Sequence[str], include_path: str | None):
    """lm-eval's task index. Indexing the ~15,000 built-in tasks takes seconds, so when every
    task is found in ``include_path`` the built-in ones are left out."""
    from lm_eval.tasks import TaskManager

    if include_path:
        if not Path(include_path).is_dir():
            raise FileNotFoundError(f"{include_path}: no such folder of task YAMLs")
        local = TaskManager(include_path=include_path, include_defaults=False)
        if all(t in local.all_tasks for t in tasks):
            return local
    manager = TaskManager(include_path=include_path)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise ValueError(f"unknown lm-eval task(s) {unknown}" + (f" (not in {include_path} either)" if include_path
                                                                 else "; add --include-path for your own YAMLs"))
    return manager


def run_harness(cfg: HarnessConfig, output_dir: Path | None = None) -> tuple[EvalResult, dict]:
    """Run lm-eval; returns our result (``TASK/METRIC`` keys, 95 % intervals as value +- 1.96
    lm-eval standard errors, the normal approximation) and lm-eval's own results. ``output_dir`` gets
    ``lm_eval_results.json``. ``cfg.progress`` False: no progress bars, lm-eval's included."""
    from lm_eval import evaluator
    from lm_eval.utils import handle_non_serializable

    if cfg.base_url is not None:
        check_reachable(cfg.base_url)
    model_type, model_args = lm_eval_model(cfg)  # checks the model or server first: indexing tasks takes seconds
    with contextlib.nullcontext() if cfg.progress else progress_bars_off():
        manager = task_manager(cfg.tasks, cfg.include_path)
        try:
            raw = evaluator.simple_evaluate(
                model=model_type, model_args=model_args, tasks=list(cfg.tasks), num_fewshot=cfg.num_fewshot,
                batch_size=cfg.batch_size if model_type == "hf" else 1, limit=cfg.limit, task_manager=manager,
                log_samples=cfg.log_samples, random_seed=cfg.seed, numpy_random_seed=cfg.seed,
                torch_random_seed=cfg.seed, fewshot_random_seed=cfg.seed,
            )
        except OSError as e:  # a model or tokenizer neither a folder here nor reachable on the hub, a lost server
            where = "no such folder here, and as a hub id: " if cfg.model and not Path(cfg.model).exists() else ""
            raise ValueError(f"lm-eval on {cfg.model or cfg.base_url}: {where}{e}") from None
    if raw is None:  # lm-eval returns None on non-zero ranks of a distributed run
        raise RuntimeError("lm-eval returned no results")
    metrics: dict[str, float] = {}
    ci95: dict[str, tuple[float, float]] = {}
    counts: dict[str, int] = {}
    for task, values in raw["results"].items():
        for key, value in values.items():
            name, comma, filt = key.partition(",")  # metric keys are "METRIC,FILTER"; others are bookkeeping
            if not comma or "_stderr" in name or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            label = f"{task}/{name}" + ("" if filt in ("", "none") else f"[{filt}]")
            metrics[label] = float(value)
            stderr = values.get(f"{name}_stderr,{filt}")
            if isinstance(stderr, (int, float)) and not math.isnan(stderr):
                ci95[label] = (value - 1.96 * stderr, value + 1.96 * stderr)
        n = raw.get("n-samples", {}).get(task, {})
        if "effective" in n:
            counts[f"{task}/examples"] = int(n["effective"])
    public_args = {k: v for k, v in model_args.items() if k != "auth_token"}
    settings = {"model_type": model_type, "model_args": public_args, "tasks": list(cfg.tasks),
                "num_fewshot": cfg.num_fewshot, "limit": cfg.limit, "include_path": cfg.include_path, "seed": cfg.seed,
                "lm_eval_version": _lm_eval_version()}
    result = EvalResult("harness", cfg.model or cfg.base_url, cfg.include_path, metrics, ci95, counts, settings)
    if output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
        keep = {k: v for k, v in raw.items() if k != "samples"}
        (output_dir / "lm_eval_results.json").write_text(
            json.dumps(keep, indent=2, default=handle_non_serializable, ensure_ascii=False), encoding="utf-8")
        if cfg.log_samples and "samples" in raw:
            (output_dir / "lm_eval_samples.json").write_text(
                json.dumps(raw["samples"], default=handle_non_serializable, ensure_ascii=False), encoding="utf-8")
    return result, raw


@contextlib.contextmanager
def progress_bars_off() -> Iterator[None]:
    """No progress bars while the block runs: lm-eval's, transformers' and datasets'. lm-eval makes
    its tqdm bars itself with no switch that ``simple_evaluate`` passes down (and ``TQDM_DISABLE``
    is read when tqdm is imported), so every tqdm bar made meanwhile is made disabled."""
    import datasets
    import tqdm.std
    from transformers.utils import logging as hf_logging

    original = tqdm.std.tqdm.__init__

    def disabled(self, *args, **kwargs):
        kwargs["disable"] = True
        original(self, *args, **kwargs)

    datasets_on, transformers_on = datasets.is_progress_bar_enabled(), hf_logging.is_progress_bar_enabled()
    tqdm.std.tqdm.__init__ = disabled
    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        tqdm.std.tqdm.__init__ = original
        if datasets_on:
            datasets.enable_progress_bars()
        if transformers_on:
            hf_logging.enable_progress_bar()


def _lm_eval_version() -> str:
    from importlib.metadata import version

    return version("lm-eval")
