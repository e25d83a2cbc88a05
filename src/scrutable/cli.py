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
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from scrutable.commands import (
    HUB_SCORER,
    OFFLINE_SCORER,
    evaluate_command,
    pareto_command,
    report_command,
    sweep_command,
    sweep_target,
    train_command,
    ui_command,
)
from scrutable.errors import UserError
from scrutable.paths import os_error_reason
from scrutable.prompts import check_prompt_fits, load_soft_prompt

__all__ = ["build_parser", "check_prompt_fits", "load_soft_prompt", "main"]  # the rules, still importable here


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
    evaluate.set_defaults(run=evaluate_command)

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
    train.set_defaults(run=train_command)

    sweep = commands.add_parser("sweep", help="run (or --resume) a sweep from sweeps/*.yaml")
    sweep.add_argument(
        "spec",
        type=sweep_target,
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
    sweep.set_defaults(run=sweep_command)

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
    pareto.set_defaults(run=pareto_command)

    report = commands.add_parser("report", help="write docs/results.md (tables, plots) from sweep folders")
    report.add_argument("folders", type=Path, nargs="+", help="sweep folders (storage/name)")
    report.add_argument("--out", type=Path, default=Path("docs/results.md"), help="markdown file (figures beside it)")
    report.set_defaults(run=report_command)

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
    ui.set_defaults(run=ui_command)
    return parser


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
    return f"cannot write {name} ({os_error_reason(exc)}): {fixes.get(exc.errno or 0, 'check the path')}"


if __name__ == "__main__":
    sys.exit(main())
