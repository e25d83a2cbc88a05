"""The `scrutable` command line.

    scrutable evaluate --task sst2 --model smollm2-135m --scorer smollm2-135m --prompt "Rate it:"
    scrutable train --method pez --task sst2 --model smollm2-135m --scorer smollm2-135m
    scrutable sweep sweeps/quickstart.yaml --out runs/quickstart
    scrutable pareto runs/quickstart --reference task/dev_objective=0.5 --reference interp/perplexity=1e6
    scrutable ui runs/quickstart
    scrutable report runs/results/sst2_pez --out docs/results.md

User mistakes (bad arguments, unknown tasks, missing files, an offline hub) print one
line `scrutable: error: ...` naming the problem and the fix, and exit with code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from scrutable.errors import UserError
from scrutable.paths import check_writable
from scrutable.prompts import check_prompt_fits, load_soft_prompt

if TYPE_CHECKING:
    from scrutable.sweep.spec import SweepSpec


DESCRIPTION = """\
Map how readable a trainable prompt can be before it stops working.

main commands:
  evaluate  the interpretability card of one prompt (faithfulness, perplexity, task metric)
            scrutable evaluate --task sst2 --model smollm2-135m --scorer smollm2-135m --prompt " It was"
  train     train one prompt without Ray Tune (soft_prompt, pez or rlprompt)
            scrutable train --method pez --task sst2 --model smollm2-135m --scorer smollm2-135m --out runs/one
  sweep     search alpha and prompt length with Ray Tune + Optuna, tracked in MLflow
            scrutable sweep sweeps/quickstart.yaml --out runs/quickstart

then: `scrutable pareto runs/quickstart` (the frontier files) and `scrutable ui runs/quickstart`
(MLflow's runs table). Offline models: smollm2-135m, tiny-gpt2, tiny-t5.
"""
OFFLINE_SCORER = "smollm2-135m"
HUB_SCORER = "gpt2-xl"  # the paper's scorer


def default_scorer() -> str:
    """gpt2-xl from the hub, or the offline SmolLM2 when the hub is switched off (HF_HUB_OFFLINE)."""
    import os

    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    return OFFLINE_SCORER if offline else HUB_SCORER


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}: give a number from 1 to 65535") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is out of range: give a number from 1 to 65535")
    return port


def _reference(text: str) -> tuple[str, float]:
    metric, sep, value = text.partition("=")
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not sep or not metric or number != number or number in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(
            f"invalid reference {text!r}: write METRIC=NUMBER with a finite number, e.g. task/dev_objective=0.5"
        )
    return metric.strip(), number


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not usage + error
        raise UserError(f"{message} (see '{self.prog} --help')")


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", required=True, help="sst2, boolq or yelp")
    parser.add_argument("--model", required=True, help="hub name, local folder, or smollm2-135m / tiny-gpt2 / tiny-t5")
    parser.add_argument(
        "--scorer",
        default=None,
        help=f"perplexity scorer LM (default {HUB_SCORER}; {OFFLINE_SCORER}, which works offline, when "
        "HF_HUB_OFFLINE=1)",
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        help="folder laid out like ../shared/data (default: $SCRUTABLE_DATA_DIR, else the hub)",
    )
    parser.add_argument(
        "--data-seed",
        type=int,
        default=None,
        help="data seed, the config's data_seed (SST-2 few-shot split: 13, 21, 42, 87, 100)",
    )
    parser.add_argument(
        "--device",
        default=None,
        choices=["auto", "cpu", "cuda"],
        help="where the models run (default auto: a visible GPU, else the CPU)",
    )
    parser.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "bfloat16", "float16"],
        help="the frozen models' weights (default float32); losses and perplexities stay float32",
    )


def build_parser() -> argparse.ArgumentParser:
    from scrutable import __version__

    parser = _Parser(prog="scrutable", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"scrutable {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")

    evaluate = commands.add_parser("evaluate", help="print the interpretability card of one prompt")
    _add_model_args(evaluate)
    source = evaluate.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="a hard prompt as text")
    source.add_argument("--soft-prompt", type=Path, help="a (L, D) tensor saved with torch.save")
    evaluate.add_argument("--split", default="dev", choices=["train", "dev", "test"], help="data split (default dev)")
    evaluate.add_argument("--limit", type=int, default=None, help="evaluate on this many examples (a fixed sample)")
    evaluate.add_argument(
        "--distance",
        default="euclidean",
        choices=["euclidean", "cosine"],
        help="distance for mapping vectors to their nearest tokens (default euclidean)",
    )
    evaluate.add_argument("--json", type=Path, default=None, help="also write the card as JSON here")
    evaluate.set_defaults(run=_evaluate)

    train = commands.add_parser("train", help="run one trial without Ray Tune (for debugging)")
    train.add_argument("--method", required=True, help="soft_prompt, pez or rlprompt")
    _add_model_args(train)
    train.add_argument("--alpha", type=float, default=None, help="perplexity weight (default: the method's, 0)")
    train.add_argument(
        "--prompt-length", type=int, default=None, help="prompt tokens/vectors L (default: the method's)"
    )
    train.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the method's)")
    train.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other config field, type-checked (repeatable), e.g. --set learning_rate=0.01",
    )
    train.add_argument("--out", type=Path, default=None, help="write prompt.pt, card.json and metrics.json here")
    train.set_defaults(run=_train)

    sweep = commands.add_parser("sweep", help="run (or --resume) a sweep from sweeps/*.yaml")
    sweep.add_argument(
        "spec",
        type=_sweep_target,
        help="a sweep file, e.g. sweeps/quickstart.yaml, or (with --resume) a sweep folder, or the sweep's "
        "place in a storage URI, s3://BUCKET/PREFIX/NAME (its driver folder is fetched into local_dir/NAME)",
    )
    sweep.add_argument(
        "--resume",
        action="store_true",
        help="finish an interrupted sweep with the spec stored in its folder (only concurrency may change). "
        "SECURITY: resuming unpickles the folder's Ray Tune state, which runs code; only folders whose "
        "state this user signed (the key in ~/.config/scrutable/state.key) are resumed",
    )
    sweep.add_argument(
        "--trust-folder",
        action="store_true",
        help="with --resume: skip the signature check (only for a folder you know is safe)",
    )
    sweep.add_argument(
        "--out",
        type=Path,
        default=None,
        help="the sweep folder (default: the spec's storage/name, e.g. runs/quickstart); its last part names the sweep",
    )
    sweep.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec field, type-checked (repeatable), e.g. --set trials=4",
    )
    sweep.add_argument("--smoke", action="store_true", help="apply the spec's `smoke:` overrides (tiny models)")
    sweep.add_argument(
        "--json",
        action="store_true",
        help="print the summary (frontier rows, hypervolume, files, counts) as one JSON document on stdout; "
        "progress goes to stderr",
    )
    sweep.add_argument(
        "--address",
        default=None,
        help="run on an existing Ray cluster: 'auto' (this machine's cluster, e.g. on the head or in "
        "`ray job submit`), HOST:6379, or ray://HOST:10001. Default: $RAY_ADDRESS if set, else a local "
        "Ray bound to 127.0.0.1. See docs/cluster.md",
    )
    sweep.add_argument(
        "--shared-storage",
        action="store_true",
        help="with --address and a storage path: the path is a mount every node sees (NFS, EFS); without "
        "it, a cluster sweep needs storage s3://... or gs://...",
    )
    sweep.set_defaults(run=_sweep)

    pareto = commands.add_parser("pareto", help="export the Pareto frontier of a sweep folder")
    pareto.add_argument("folder", type=Path, help="the sweep folder (storage/name)")
    pareto.add_argument("--out", type=Path, default=None, help="output folder (default FOLDER/pareto)")
    pareto.add_argument(
        "--reference",
        type=_reference,
        action="append",
        default=None,
        metavar="METRIC=VALUE",
        help="the hypervolume's reference point, one per objective (repeat), e.g. --reference "
        "task/dev_objective=0.5 --reference interp/perplexity=1e6; compare sweeps' hypervolumes only "
        "under the same reference (default: 10%% beyond each sweep's worst trial)",
    )
    pareto.add_argument(
        "--json", action="store_true", help="print the summary as one JSON document on stdout (for scripts)"
    )
    pareto.set_defaults(run=_pareto)

    report = commands.add_parser("report", help="write docs/results.md (tables, plots) from sweep folders")
    report.add_argument("folders", type=Path, nargs="+", help="sweep folders (storage/name)")
    report.add_argument("--out", type=Path, default=Path("docs/results.md"), help="markdown file (figures beside it)")
    report.set_defaults(run=_report)

    ui = commands.add_parser("ui", help="serve MLflow on a sweep's store (127.0.0.1 only) and print its runs table")
    ui.add_argument(
        "folder",
        type=Path,
        nargs="?",
        default=Path("runs/quickstart"),
        help="the sweep folder holding mlflow.db and mlartifacts/ (default runs/quickstart); may be a "
        "copied or moved one",
    )
    ui.add_argument("--port", type=_port, default=5000, help="port on 127.0.0.1 (default 5000)")
    ui.add_argument(
        "--no-browser", action="store_true", help="only print the link (no browser is opened without a display)"
    )
    ui.set_defaults(run=_ui)
    return parser


def _evaluate(args: argparse.Namespace) -> int:
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


def _train(args: argparse.Namespace) -> int:
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
    written = _save_training(args.out, result) if args.out is not None else []  # before anything else can fail
    print(result.card.render())
    if written:
        print(f"wrote {', '.join(written)} to {args.out}")
    return 0


def _save_training(out: Path, result: Any) -> list[str]:
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
            f"could not write --out {out} ({_os_error_reason(exc)}; wrote {', '.join(written) or 'nothing'}): "
            f"{kept}; free space or pass another --out"
        ) from None
    return written


def _sweep_target(text: str) -> Path | str:
    """A sweep file or folder (a path), or a sweep's place in a storage URI (kept a string)."""
    from scrutable.sweep.storage import is_uri

    return text if is_uri(text) else Path(text)


def _sweep(args: argparse.Namespace) -> int:
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
    _check_before_ray(spec, args)
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

        ray.shutdown()
    if args.json:
        print(json.dumps(_finite(summary), indent=2, default=str, allow_nan=False))
    if summary["interrupted"]:
        return 130
    return 1 if summary["all_failed"] else 0


def _finite(value: object) -> object:
    """JSON for scripts: a NaN or infinity (e.g. a mean over no batches) becomes null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _check_before_ray(spec: SweepSpec, args: argparse.Namespace) -> None:
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


def _pareto(args: argparse.Namespace) -> int:
    from scrutable.sweep.folder import SweepFolder
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
    out = args.out or folder.pareto_dir
    check_writable(out, "--out", folder=True)
    summary = export_pareto(folder.trials(), spec, out, reference=reference)
    if args.json:
        document = {**summary_json(summary), "files": {k: str(v) for k, v in summary.files.items()}}
        print(json.dumps(_finite(document), indent=2, allow_nan=False))
    else:
        print(render_summary(summary))
    return 0


def _report(args: argparse.Namespace) -> int:
    from scrutable.report import write_report

    print(f"wrote {write_report(args.folders, args.out)}")
    return 0


def _ui(args: argparse.Namespace) -> int:
    from scrutable.sweep.ui import serve

    return serve(args.folder, args.port, open_browser=not args.no_browser)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        run: Callable[[argparse.Namespace], int] = args.run
        return run(args)
    except UserError as exc:
        message = " ".join(str(exc).split())  # one line, whatever a value in it held
        print(f"scrutable: error: {message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("scrutable: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        if exc.errno not in _USER_ERRNOS:
            raise
        print(f"scrutable: error: {_os_error_line(exc)}", file=sys.stderr)
        return 2


def _errno_set(*names: str) -> frozenset[int]:
    import errno

    return frozenset(getattr(errno, name) for name in names if hasattr(errno, name))


# What the user's disk or paths cause, as opposed to a bug: answered in one line at the edge.
_USER_ERRNOS = _errno_set("ENOSPC", "EDQUOT", "EROFS", "EACCES", "EPERM", "ENAMETOOLONG")


def _os_error_reason(exc: OSError) -> str:
    import errno

    reasons = {
        errno.ENOSPC: "no space left on the device",
        errno.EROFS: "a read-only file system",
        errno.EACCES: "permission denied",
        errno.EPERM: "operation not permitted",
        errno.ENAMETOOLONG: "a name longer than the file system allows (255 bytes)",
    }
    return reasons.get(exc.errno or 0, exc.strerror or type(exc).__name__)


def _os_error_line(exc: OSError) -> str:
    import errno

    name = str(exc.filename) if exc.filename is not None else "a file"
    if len(name) > 100:
        name = f"{name[:70]}...({len(name)} characters)"
    fixes = {
        errno.ENOSPC: "free some space or write to another disk",
        errno.EROFS: "pass a path on a writable file system",
        errno.EACCES: "pass a path you can write, or fix its permissions",
        errno.EPERM: "pass a path you can write, or fix its permissions",
        errno.ENAMETOOLONG: "shorten the path",
    }
    return f"cannot write {name} ({_os_error_reason(exc)}): {fixes.get(exc.errno or 0, 'check the path')}"


if __name__ == "__main__":
    sys.exit(main())
