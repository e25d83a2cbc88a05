"""The `scrutable` command line.

    scrutable evaluate --task sst2 --model smollm2-135m --scorer smollm2-135m --prompt "Rate it:"
    scrutable train --method pez --task sst2 --model smollm2-135m --scorer smollm2-135m
    scrutable sweep sweeps/quickstart.yaml
    scrutable pareto runs/quickstart --out runs/quickstart/pareto
    scrutable ui runs/quickstart

User mistakes (bad arguments, unknown tasks, missing files, an offline hub) print one
line `scrutable: error: ...` naming the problem and the fix, and exit with code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from scrutable.errors import UserError
from scrutable.paths import check_writable

if TYPE_CHECKING:
    import torch

    from scrutable.models import LanguageModel
    from scrutable.sweep.spec import SweepSpec


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not usage + error
        raise UserError(f"{message} (see '{self.prog} --help')")


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", required=True, help="sst2, boolq or yelp")
    parser.add_argument("--model", required=True, help="hub name, local folder, or smollm2-135m / tiny-gpt2 / tiny-t5")
    parser.add_argument("--scorer", default="gpt2-xl", help="perplexity scorer LM (default gpt2-xl)")
    parser.add_argument(
        "--data-dir",
        default=None,
        help="folder laid out like ../shared/data (default: $SCRUTABLE_DATA_DIR, else the hub)",
    )
    parser.add_argument("--seed", type=int, default=None, help="data seed (SST-2 few-shot split: 13, 21, 42, 87, 100)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="scrutable", description=__doc__.splitlines()[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    evaluate = commands.add_parser("evaluate", help="print the interpretability card of one prompt")
    _add_model_args(evaluate)
    source = evaluate.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="a hard prompt as text")
    source.add_argument("--soft-prompt", type=Path, help="a (L, D) tensor saved with torch.save")
    evaluate.add_argument("--split", default="dev", choices=["train", "dev", "test"])
    evaluate.add_argument("--limit", type=int, default=None, help="evaluate on this many examples (a fixed sample)")
    evaluate.add_argument("--distance", default="euclidean", choices=["euclidean", "cosine"])
    evaluate.add_argument("--json", type=Path, default=None, help="also write the card as JSON here")
    evaluate.set_defaults(run=_evaluate)

    train = commands.add_parser("train", help="run one trial without Ray Tune (for debugging)")
    train.add_argument("--method", required=True, help="soft_prompt, pez or rlprompt")
    _add_model_args(train)
    train.add_argument("--alpha", type=float, default=None, help="perplexity weight")
    train.add_argument("--prompt-length", type=int, default=None)
    train.add_argument("--steps", type=int, default=None)
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
        "spec", type=Path, help="a sweep file, e.g. sweeps/quickstart.yaml, or (with --resume) a sweep folder"
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
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec field, type-checked (repeatable), e.g. --set trials=4",
    )
    sweep.add_argument("--smoke", action="store_true", help="apply the spec's `smoke:` overrides (tiny models)")
    sweep.set_defaults(run=_sweep)

    pareto = commands.add_parser("pareto", help="export the Pareto frontier of a sweep folder")
    pareto.add_argument("folder", type=Path, help="the sweep folder (storage/name)")
    pareto.add_argument("--out", type=Path, default=None, help="output folder (default FOLDER/pareto)")
    pareto.set_defaults(run=_pareto)

    ui = commands.add_parser("ui", help="open the MLflow UI on a sweep's store (127.0.0.1 only)")
    ui.add_argument("folder", type=Path, nargs="?", default=Path("runs/quickstart"))
    ui.add_argument("--port", type=int, default=5000)
    ui.set_defaults(run=_ui)
    return parser


def _evaluate(args: argparse.Namespace) -> int:
    import torch

    from scrutable.card import build_card
    from scrutable.metrics.perplexity import LocalScorer
    from scrutable.models import load_model
    from scrutable.tasks import get_task

    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be at least 1, got {args.limit}")
    if args.soft_prompt is not None and not args.soft_prompt.is_file():
        raise UserError(f"soft prompt file {args.soft_prompt} does not exist")
    if args.json is not None:
        check_writable(args.json, "--json", folder=False)
    task = get_task(args.task, data_dir=args.data_dir, seed=args.seed)
    lm = load_model(args.model, data_dir=args.data_dir)
    scorer_lm = lm if args.scorer == args.model else load_model(args.scorer, data_dir=args.data_dir)
    if args.prompt is not None:
        ids = lm.tokenizer(args.prompt, add_special_tokens=False, verbose=False)["input_ids"]
        if not ids:
            raise UserError("--prompt is empty: give at least one token of text")
        prompt, is_soft = lm.embedding_matrix[torch.tensor(ids)], False
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
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(card.to_dict(), indent=2) + "\n")
    return 0


def _train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from scrutable.config import from_mapping, parse_overrides
    from scrutable.trainables import get_method
    from scrutable.trainables.common import save_state

    method = get_method(args.method)
    values: dict[str, object] = {"task": args.task, "model": args.model, "scorer": args.scorer}
    flags = {
        "data_dir": args.data_dir,
        "data_seed": args.seed,
        "alpha": args.alpha,
        "prompt_length": args.prompt_length,
        "steps": args.steps,
    }
    values.update({k: v for k, v in flags.items() if v is not None})
    values.update(parse_overrides(args.set))
    config = from_mapping(method.config_cls, values, where=f"{args.method} config")
    if args.out is not None:
        check_writable(args.out, "--out", folder=True)
    from scrutable.tasks import get_task
    from scrutable.trainables.common import cached_model

    get_task(config.task, data_dir=config.data_dir, seed=config.data_seed)  # a bad task fails before the bar
    check_prompt_fits(cached_model(config.model, config.data_dir), config.prompt_length, "--prompt-length")
    with tqdm(total=config.steps, desc=args.method, unit="step") as bar:

        def progress(step: int, shown: dict[str, float]) -> None:
            bar.update(step - bar.n)
            bar.set_postfix(shown, refresh=False)

        result = method.run(config, progress=progress)
    print(result.card.render())
    if args.out is not None:
        written = [save_state(result.state, args.out).name]
        if "prompt" in result.state:  # a continuous prompt (soft prompt, PEZ): evaluate --soft-prompt
            import torch

            torch.save({"prompt": result.state["prompt"]}, args.out / "prompt.pt")
            written.append("prompt.pt")
        (args.out / "card.json").write_text(json.dumps(result.card.to_dict(), indent=2) + "\n")
        (args.out / "metrics.json").write_text(json.dumps(result.metrics, indent=2, default=str) + "\n")
        print(f"wrote {', '.join([*written, 'card.json', 'metrics.json'])} to {args.out}")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from scrutable.config import parse_overrides
    from scrutable.sweep.launcher import run_sweep
    from scrutable.sweep.spec import load_spec

    overrides = parse_overrides(args.set)
    if args.trust_folder and not args.resume:
        raise UserError("--trust-folder only applies with --resume")
    if args.spec.is_dir():  # a sweep folder: its stored spec, re-rooted where the folder is now
        from scrutable.sweep.resume import stored_spec

        if not args.resume:
            raise UserError(f"{args.spec} is a sweep folder: pass --resume to finish it, or a sweep file to start one")
        spec = stored_spec(args.spec, overrides)
    else:
        spec = load_spec(args.spec, overrides, smoke=args.smoke)
    try:
        summary = run_sweep(spec, resume=args.resume, trust_folder=args.trust_folder)
    finally:
        import ray

        ray.shutdown()
    if summary["interrupted"]:
        return 130
    return 1 if summary["all_failed"] else 0


def _sweep_folder_spec(folder: Path) -> SweepSpec:
    from scrutable.sweep.spec import load_spec

    if not (folder / "spec.yaml").is_file():
        raise UserError(f"{folder} is not a sweep folder (no spec.yaml): pass runs/<sweep name>")
    return load_spec(folder / "spec.yaml")


def _pareto(args: argparse.Namespace) -> int:
    from scrutable.sweep.frontier import export_pareto, render_summary
    from scrutable.sweep.results import collect_trials

    spec = _sweep_folder_spec(args.folder)
    check_writable(args.out or args.folder / "pareto", "--out", folder=True)
    summary = export_pareto(collect_trials(args.folder.resolve(), spec), spec, args.out or args.folder / "pareto")
    print(render_summary(summary))
    return 0


def _ui(args: argparse.Namespace) -> int:
    import os
    import subprocess

    spec = _sweep_folder_spec(args.folder)
    uri = spec.tracking.uri or f"sqlite:///{args.folder.resolve() / 'mlflow.db'}"
    print(f"MLflow UI for {uri} at http://127.0.0.1:{args.port} (Ctrl-C to stop)", flush=True)
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        uri,
        "--host",
        "127.0.0.1",
        "--port",
        str(args.port),
        "--workers",
        "1",
    ]
    try:
        return subprocess.call(command, env=env)
    except KeyboardInterrupt:
        return 0


def check_prompt_fits(lm: LanguageModel, length: int, what: str) -> None:
    """A prompt may take at most half the model's context: the task input needs the rest."""
    from scrutable.models import max_positions

    positions = max_positions(lm)
    if positions is not None and length > positions // 2:
        raise UserError(
            f"{what} is {length} tokens, too long for {lm.name}'s {positions}-position context (the task input "
            f"needs room too): use at most {positions // 2} tokens"
        )


def load_soft_prompt(path: Path, hidden_size: int) -> torch.Tensor:
    """A soft prompt file: a (L, D) tensor, or a dict holding one under 'prompt'."""
    import torch

    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # the weights-only unpickler raises many types on a foreign file
        raise UserError(
            f"{path} is not a torch tensor file ({type(exc).__name__}): save the prompt with torch.save"
        ) from None
    if isinstance(loaded, dict):
        loaded = loaded.get("prompt")
    if not isinstance(loaded, torch.Tensor) or loaded.dim() != 2:
        raise UserError(f"{path} holds no (L, D) prompt tensor: save a 2-D tensor or {{'prompt': tensor}}")
    if loaded.shape[0] == 0:
        raise UserError(f"{path} holds a prompt of 0 vectors: save at least one row")
    if not loaded.is_floating_point() or not bool(torch.isfinite(loaded).all()):
        raise UserError(f"{path} holds NaN, infinite or non-float values: save a finite float prompt")
    if loaded.shape[1] != hidden_size:
        raise UserError(
            f"{path} has vectors of width {loaded.shape[1]} but the model's embeddings are {hidden_size} wide: "
            "evaluate it with the model it was trained on"
        )
    return loaded.float()


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


if __name__ == "__main__":
    sys.exit(main())
