"""What each `scrutable` command does once `cli.py` has parsed its arguments.

    evaluate_command  the interpretability card of one prompt
    train_command     one prompt trained without Ray Tune; its files under --out (save_training)
    sweep_command     a sweep from a file, or a sweep folder resumed (`sweep/launcher.py`)
    pareto_command    the frontier files of a sweep folder (`sweep/frontier.py`)
    report_command    docs/results.md from sweep folders (`report/`)
    ui_command        MLflow's server on a sweep folder (`sweep/ui.py`)

Each takes the parsed `argparse.Namespace` and returns the exit code; a user mistake is a
`UserError`, which `cli.main` prints as one line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scrutable.errors import UserError
from scrutable.paths import check_writable, os_error_reason
from scrutable.prompts import check_prompt_fits, load_soft_prompt

if TYPE_CHECKING:
    from scrutable.sweep.spec import SweepSpec

OFFLINE_SCORER = "smollm2-135m"
HUB_SCORER = "gpt2-xl"  # the paper's scorer


def default_scorer() -> str:
    """gpt2-xl from the hub, or the offline SmolLM2 when the hub is switched off (HF_HUB_OFFLINE)."""
    import os

    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    return OFFLINE_SCORER if offline else HUB_SCORER


def evaluate_command(args: argparse.Namespace) -> int:
    import torch

    from scrutable.card import build_card
    from scrutable.metrics.perplexity import LocalScorer
    from scrutable.models import DEFAULT_DEVICE, DEFAULT_DTYPE, load_model
    from scrutable.tasks import get_task

    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be at least 1, got {args.limit}")
    if args.prompt is not None:
        try:
            args.prompt.encode("utf-8")  # a lone surrogate: bytes from the shell that are not UTF-8
        except UnicodeEncodeError as exc:
            raise UserError(
                f"--prompt is not UTF-8 text (character {exc.start + 1} is an undecodable byte): pass UTF-8 text"
            ) from None
    if args.soft_prompt is not None and not args.soft_prompt.is_file():
        raise UserError(f"soft prompt file {args.soft_prompt} does not exist")
    if args.json is not None:
        check_writable(args.json, "--json", folder=False)
    task = get_task(args.task, data_dir=args.data_dir, seed=args.data_seed)
    placed = {"device": args.device or DEFAULT_DEVICE, "dtype": args.dtype or DEFAULT_DTYPE}
    lm = load_model(args.model, data_dir=args.data_dir, **placed)
    scorer = args.scorer or default_scorer()
    scorer_lm = lm if scorer == args.model else load_model(scorer, data_dir=args.data_dir, **placed)
    if args.prompt is not None:
        ids = lm.tokenizer(args.prompt, add_special_tokens=False, verbose=False)["input_ids"]
        if not ids:
            raise UserError("--prompt is empty: give at least one token of text")
        prompt, is_soft = lm.embedding_matrix[torch.tensor(ids, device=lm.device)], False
    else:
        prompt, is_soft = load_soft_prompt(args.soft_prompt, lm.hidden_size), True
    check_prompt_fits(lm, prompt.shape[0], "--prompt" if args.prompt is not None else str(args.soft_prompt))
    card = build_card(
        task,
        lm,
        LocalScorer(scorer_lm),
        prompt,
        is_soft=is_soft,
        split=args.split,
        limit=args.limit,
        distance=args.distance,
    )
    print(card.render())
    if args.json is not None:
        from scrutable.paths import write_atomically

        write_atomically(args.json, json.dumps(card.to_dict(), indent=2) + "\n")
    return 0


def train_command(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from scrutable.config import from_mapping, parse_overrides
    from scrutable.trainables import get_method

    method = get_method(args.method)
    values: dict[str, object] = {"task": args.task, "model": args.model, "scorer": args.scorer or default_scorer()}
    flags = {
        "data_dir": args.data_dir,
        "data_seed": args.data_seed,
        "alpha": args.alpha,
        "prompt_length": args.prompt_length,
        "steps": args.steps,
        "device": args.device,
        "dtype": args.dtype,
    }
    values.update({k: v for k, v in flags.items() if v is not None})
    values.update(parse_overrides(args.set))
    config = from_mapping(method.config_cls, values, where=f"{args.method} config")
    if args.out is not None:
        check_writable(args.out, "--out", folder=True)
    from scrutable.tasks import get_task
    from scrutable.trainables.common import config_model

    get_task(config.task, data_dir=config.data_dir, seed=config.data_seed)  # a bad task fails before the bar
    check_prompt_fits(config_model(config, config.model), config.prompt_length, "--prompt-length")
    with tqdm(total=config.steps, desc=args.method, unit="step") as bar:

        def progress(step: int, shown: dict[str, float]) -> None:
            bar.update(step - bar.n)
            bar.set_postfix(shown, refresh=False)

        result = method.run(config, progress=progress)
    written = save_training(args.out, result) if args.out is not None else []  # before anything else can fail
    print(result.card.render())
    if written:
        print(f"wrote {', '.join(written)} to {args.out}")
    return 0


def save_training(out: Path, result: Any) -> list[str]:
    """Write a trained run's files under `out`, the prompt first, each through a temporary
    file. If `out` cannot take them (disk full, read-only), the state is saved in the
    temporary folder instead and the error line says where: training is never lost."""
    import os
    import tempfile

    import torch

    from scrutable.paths import atomic_path, write_atomically
    from scrutable.trainables.common import STATE_FILE

    written: list[str] = []
    try:
        if "prompt" in result.state:  # a continuous prompt (soft prompt, PEZ): evaluate --soft-prompt
            with atomic_path(out / "prompt.pt") as temporary:
                torch.save({"prompt": result.state["prompt"]}, temporary)
            written.append("prompt.pt")
        with atomic_path(out / STATE_FILE) as temporary:
            torch.save(dict(result.state), temporary)
        written.append(STATE_FILE)
        write_atomically(out / "card.json", json.dumps(result.card.to_dict(), indent=2) + "\n")
        write_atomically(out / "metrics.json", json.dumps(result.metrics, indent=2, default=str) + "\n")
        written += ["card.json", "metrics.json"]
    except OSError as exc:
        rescue = Path(tempfile.gettempdir()) / f"scrutable-train-{os.getpid()}-{STATE_FILE}"
        try:
            torch.save(dict(result.state), rescue)
            kept = f"the trained state is saved at {rescue}"
        except OSError:
            kept = "the trained state could not be saved anywhere"
        raise UserError(
            f"could not write --out {out} ({os_error_reason(exc)}; wrote {', '.join(written) or 'nothing'}): "
            f"{kept}; free space or pass another --out"
        ) from None
    return written


def sweep_target(text: str) -> Path | str:
    """A sweep file or folder (a path), or a sweep's place in a storage URI (kept a string)."""
    from scrutable.sweep.storage import is_uri

    return text if is_uri(text) else Path(text)


def sweep_command(args: argparse.Namespace) -> int:
    started = time.monotonic()  # "finished in N s" counts from here, Ray's start-up included
    from scrutable.config import parse_overrides
    from scrutable.sweep.launcher import run_sweep
    from scrutable.sweep.spec import load_spec

    overrides = parse_overrides(args.set)
    if args.trust_folder and not args.resume:
        raise UserError("--trust-folder only applies with --resume")
    if args.out is not None:  # the folder is storage/name: --out runs/x is storage=runs, name=x
        out = args.out.expanduser().resolve()
        overrides.update(storage=json.dumps(str(out.parent)), name=json.dumps(out.name))  # JSON is YAML
    if isinstance(args.spec, str):  # s3://.../NAME: the driver folder from the bucket, into local_dir/NAME
        from scrutable.sweep.driver_sync import resume_folder

        if not args.resume:
            raise UserError(f"{args.spec} is a sweep in a bucket: pass --resume to finish it")
        args.spec, overrides = resume_folder(args.spec, overrides)
    if args.spec.is_dir():  # a sweep folder: its stored spec, re-rooted where the folder is now
        from scrutable.sweep.folder import is_sweep_folder, not_a_sweep_folder
        from scrutable.sweep.resume import stored_spec

        if not is_sweep_folder(args.spec):
            raise not_a_sweep_folder(
                args.spec,
                "pass a sweep file such as sweeps/quickstart.yaml, or (with --resume) a folder made by "
                "`scrutable sweep`",
            )
        if not args.resume:
            raise UserError(f"{args.spec} is a sweep folder: pass --resume to finish it, or a sweep file to start one")
        if args.out is not None:
            raise UserError(
                f"--out does not apply when resuming the sweep folder {args.spec} (the folder is the sweep): drop "
                "--out, or copy the folder where you want it and resume the copy"
            )
        spec = stored_spec(args.spec, overrides)
    else:
        spec = load_spec(args.spec, overrides, smoke=args.smoke)
    check_before_ray(spec, args)
    try:
        # --json: stdout carries the one document; everything a person reads goes to stderr.
        with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
            summary = run_sweep(
                spec,
                resume=args.resume,
                address=args.address,
                started=started,
                trust_folder=args.trust_folder,
                shared_storage=args.shared_storage,
            )
    finally:
        import ray

        from scrutable.sweep.timing import mark

        mark("ray shutdown")  # Ray stops its processes one kind at a time, each given a second
        ray.shutdown()
        mark("ray shut down")  # the rest, to the command's exit, is the interpreter's
    if args.json:
        print(json.dumps(finite_json(summary), indent=2, default=str, allow_nan=False))
    if summary["interrupted"]:
        return 130
    return 1 if summary["all_failed"] else 0


def finite_json(value: object) -> object:
    """JSON for scripts: a NaN or infinity (e.g. a mean over no batches) becomes null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_json(v) for v in value]
    return value


def check_before_ray(spec: SweepSpec, args: argparse.Namespace) -> None:
    """What can be refused before Ray starts: an unwritable sweep folder (a real write, so
    root's /proc is refused too) and, on a local Ray, resources no node here can offer."""
    import os

    from scrutable.sweep.probe import check_ray_address
    from scrutable.sweep.spec_checks import check_data, check_resources_fit

    check_writable(spec.folder(), "the sweep folder", folder=True)  # storage/name, or local_dir/name for a URI
    address = args.address or os.environ.get("RAY_ADDRESS")
    if address:
        check_ray_address(address)  # seconds, not ray.init's minutes against a port that is not Ray's
    else:
        check_resources_fit(spec, str(args.spec))
    check_data(spec)


def pareto_command(args: argparse.Namespace) -> int:
    from scrutable.sweep.folder import PARETO_DIR, SweepFolder
    from scrutable.sweep.frontier import export_pareto, render_summary, summary_json

    folder = SweepFolder.open(args.folder)
    spec = folder.spec
    reference = None
    if args.reference is not None:
        given = dict(args.reference)
        unknown = sorted(set(given) - set(spec.metric_names))
        missing = [m for m in spec.metric_names if m not in given]
        if unknown or missing:
            raise UserError(
                f"--reference needs exactly one value per objective ({', '.join(spec.metric_names)}): "
                + "; ".join(
                    part
                    for part in (
                        f"unknown {', '.join(unknown)}" if unknown else "",
                        f"missing {', '.join(missing)}" if missing else "",
                    )
                    if part
                )
            )
        reference = [given[m] for m in spec.metric_names]
    out = args.out or args.folder / PARETO_DIR  # as given: the summary names the files the way the user did
    check_writable(out, "--out", folder=True)
    summary = export_pareto(folder.trials(), spec, out, reference=reference)
    if args.json:
        document = {**summary_json(summary), "files": {k: str(v) for k, v in summary.files.items()}}
        print(json.dumps(finite_json(document), indent=2, allow_nan=False))
    else:
        print(render_summary(summary))
    return 0


def report_command(args: argparse.Namespace) -> int:
    from scrutable.report import write_report

    print(f"wrote {write_report(args.folders, args.out)}")
    return 0


def ui_command(args: argparse.Namespace) -> int:
    from scrutable.sweep.ui import serve

    return serve(args.folder, args.port, open_browser=not args.no_browser)
