"""One shared perplexity model for a whole sweep: a named, async Ray actor.

Every trial talks to the same actor through `ActorScorer`, which implements the
`Scorer` interface of `scrutable.metrics.perplexity`, so a training loop cannot tell it
from the in-process `LocalScorer`. One copy of the scorer's weights serves all trials.

Batching: requests wait in a queue; a single worker task takes the first, then gathers
others until every trial seen recently (`ACTIVE_S`) has a request in the batch, the batch
holds `max_batch` sequences, or the wait would outlast what the requests can afford, and
runs one forward pass for all value requests (one forward + backward for all gradient
requests). What a request can afford is its `slack`: a loop that submits its request
without blocking (`submit_gradients`, then its own task forward, then `.result()`) does not
need the answer for a while, and `ActorScorer` sends the previous such gap as the
request's slack, so waiting for the other trials costs the loop nothing. A blocking call
has no slack and joins whatever is queued. While a batch computes, new requests pile up,
so concurrent trials share passes. The actor counts batch sizes and how many batches
mixed requests from more than one trial, and keeps the counts in a file if given one, so
they survive a restart of the actor (and of the sweep, on `--resume`).

Placement (`scorer_resources`): with `gpu > 0` the model runs on the GPU Ray reserved for
the actor, in `dtype` (bfloat16 halves GPT2-XL's 6.2 GB). `cpu` is the CPU slots the actor
reserves and the torch threads it computes with. The default 0 reserves none, so the
actor never keeps a trial from starting, and torch then runs one thread: enough to feed a
GPU; a CPU-only cluster gives the scorer cores with `scorer_resources.cpu`. The actor
restarts itself and reloads the model after a crash (`max_restarts`), and `ActorScorer`
retries a call that died with it.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray

if TYPE_CHECKING:  # torch-heavy; the driver imports this module for NAMESPACE and start_scorer
    from scrutable.metrics.perplexity import PerplexityGradient, PerplexityResult, ScoreRequest

NAMESPACE = "scrutable"
RETRIES = 5
ACTIVE_S = 30.0  # a trial that sent nothing for this long is not waited for (it ended)
SAVE_EVERY_S = 1.0  # batch statistics reach their file at most this often


def actor_name(sweep_name: str) -> str:
    return f"scorer-{sweep_name}"


@dataclass
class _Pending:
    kind: str  # "value" or "gradient"
    trial: str
    items: list[Any]
    slack: float  # seconds the caller will not look at the answer
    arrived: float
    future: asyncio.Future[list[Any]]


@dataclass
class BatchStats:
    batches: int = 0
    sequences: int = 0
    tokens: int = 0
    mixed_batches: int = 0  # batches holding requests of two or more trials
    trials_seen: set[str] = field(default_factory=set)

    def summary(self) -> dict[str, float]:
        return {
            "batches": self.batches,
            "sequences": self.sequences,
            "tokens": self.tokens,
            "mean_batch_size": self.sequences / self.batches if self.batches else 0.0,
            "mixed_batch_share": self.mixed_batches / self.batches if self.batches else 0.0,
            "trials": len(self.trials_seen),
        }

    def to_json(self) -> str:
        values = {k: getattr(self, k) for k in ("batches", "sequences", "tokens", "mixed_batches")}
        return json.dumps({**values, "trials_seen": sorted(self.trials_seen)})

    @classmethod
    def load(cls, path: Path | None) -> BatchStats:
        if path is None or not path.is_file():
            return cls()
        try:
            values = json.loads(path.read_text())
            return cls(**{**values, "trials_seen": set(values["trials_seen"])})
        except (OSError, ValueError, TypeError, KeyError):  # a damaged file: counts restart, the sweep goes on
            return cls()


def _item_tokens(kind: str, item: Any) -> int:
    if kind == "gradient":
        return len(item)
    request: ScoreRequest = item
    return len(request.token_ids) if request.token_ids is not None else len((request.text or "").split())


class ScorerService:
    """The actor's body (plain class: Ray wraps it with `ray.remote` in `start_scorer`)."""

    def __init__(
        self,
        scorer: str,
        data_dir: str | None,
        max_batch: int,
        max_wait_ms: float,
        stats_path: str | None = None,
        dtype: str = "float32",
    ) -> None:
        from scrutable.metrics.perplexity import LocalScorer
        from scrutable.models import load_model
        from scrutable.sweep.placement import place_worker

        self.placement = place_worker("auto", "the scorer actor")  # its reserved GPU, if any
        lm = load_model(scorer, data_dir=data_dir, device=self.placement.device, dtype=dtype)
        self.local = LocalScorer(lm, max_batch=max_batch)
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.stats_path = Path(stats_path) if stats_path else None
        self.stats = BatchStats.load(self.stats_path)  # counts from before a restart
        self.saved_at = 0.0
        self.last_seen: dict[str, float] = {}
        self.queue: asyncio.Queue[_Pending] | None = None
        self.worker: asyncio.Task[None] | None = None

    def identity(self) -> tuple[str, str]:
        return self.local.name, self.local.vocab_signature

    def batch_stats(self) -> dict[str, float]:
        self._save(force=True)
        return self.stats.summary()

    def process_info(self) -> dict[str, Any]:
        """pid, torch threads, peak resident memory (MiB), the model's device and dtype."""
        import torch

        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        return {
            "pid": os.getpid(),
            "threads": torch.get_num_threads(),
            "peak_rss_mib": peak_mib,
            "device": str(self.local.lm.device),
            "dtype": str(self.local.lm.dtype).removeprefix("torch."),
        }

    async def perplexity(self, trial: str, requests: list[ScoreRequest], slack: float = 0.0) -> list[PerplexityResult]:
        return await self._submit("value", trial, list(requests), slack)

    async def perplexity_gradients(
        self, trial: str, token_ids: list[list[int]], slack: float = 0.0
    ) -> list[PerplexityGradient]:
        return await self._submit("gradient", trial, list(token_ids), slack)

    async def _submit(self, kind: str, trial: str, items: list[Any], slack: float) -> list[Any]:
        if self.queue is None:  # created lazily: the event loop exists only once calls arrive
            self.queue = asyncio.Queue()
            self.worker = asyncio.get_running_loop().create_task(self._serve())
        now = time.monotonic()
        self.last_seen[trial] = now
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        await self.queue.put(_Pending(kind, trial, items, max(0.0, slack), now, future))
        return await future

    def _deadline(self, batch: list[_Pending]) -> float:
        """Start computing before any request in the batch waits longer than it can afford."""
        return min(p.arrived + min(p.slack, self.max_wait) for p in batch)

    def _waiting_for(self, batch: list[_Pending]) -> bool:
        """Does a recently active trial still miss from the batch?"""
        now = time.monotonic()
        active = {t for t, seen in self.last_seen.items() if now - seen < ACTIVE_S}
        return bool(active - {p.trial for p in batch})

    async def _serve(self) -> None:
        assert self.queue is not None
        while True:
            batch = [await self.queue.get()]
            size = len(batch[0].items)
            while size < self.max_batch:
                if not self.queue.empty():  # what piled up meanwhile joins at no cost
                    pending = self.queue.get_nowait()
                else:
                    remaining = self._deadline(batch) - time.monotonic()
                    if remaining <= 0 or not self._waiting_for(batch):
                        break
                    try:
                        pending = await asyncio.wait_for(self.queue.get(), timeout=remaining)
                    except TimeoutError:
                        break
                batch.append(pending)
                size += len(pending.items)
            for kind in ("value", "gradient"):
                group = [p for p in batch if p.kind == kind]
                if group:
                    await self._run(kind, group)

    def _compute(self, kind: str, items: list[Any]) -> list[Any]:
        if kind == "value":
            return self.local.perplexity(items)
        return self.local.perplexity_gradients(items)

    async def _run(self, kind: str, group: list[_Pending]) -> None:
        items = [item for pending in group for item in pending.items]
        try:
            # In a thread, so the event loop keeps accepting requests for the next batch.
            results = await asyncio.to_thread(self._compute, kind, items)
        except Exception as exc:  # a bad request fails its callers, not the actor
            for pending in group:
                if not pending.future.done():
                    pending.future.set_exception(exc)
            return
        trials = {p.trial for p in group}
        self.stats.batches += 1
        self.stats.sequences += len(items)
        self.stats.tokens += sum(_item_tokens(kind, item) for item in items)
        self.stats.mixed_batches += len(trials) > 1
        self.stats.trials_seen |= trials
        start = 0
        for pending in group:
            pending.future.set_result(results[start : start + len(pending.items)])
            start += len(pending.items)
        self._save()

    def _save(self, force: bool = False) -> None:
        if self.stats_path is None or not (force or time.monotonic() - self.saved_at > SAVE_EVERY_S):
            return
        temporary = self.stats_path.with_suffix(".tmp")
        try:
            temporary.write_text(self.stats.to_json())
            temporary.replace(self.stats_path)  # atomic: a crash never leaves half a file
        except OSError:  # not writable from this node (a driver-local folder on a cluster)
            self.stats_path = None
        self.saved_at = time.monotonic()


def start_scorer(
    sweep_name: str,
    scorer: str,
    data_dir: str | None,
    *,
    num_gpus: float,
    max_batch: int,
    max_wait_ms: float,
    stats_path: str | None = None,
    num_cpus: float = 0.0,
    dtype: str = "float32",
) -> Any:
    """Create (or reuse, on resume) the sweep's named scorer actor and wait until it is up."""
    remote_cls: Any = ray.remote(ScorerService)
    handle = remote_cls.options(
        name=actor_name(sweep_name),
        namespace=NAMESPACE,
        get_if_exists=True,
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        max_restarts=-1,
        max_task_retries=RETRIES,
        max_concurrency=1000,
    ).remote(scorer, data_dir, max_batch, max_wait_ms, stats_path, dtype)
    ray.get(handle.identity.remote())
    return handle


class _ActorPending:
    """A request in flight to the actor; resolving it records how long the loop did not need it."""

    def __init__(self, scorer: ActorScorer, method: str, args: tuple[Any, ...]) -> None:
        self.scorer, self.method, self.args = scorer, method, args
        self.sent = time.monotonic()
        self.ref = getattr(scorer.handle, method).remote(*args, scorer.slack.get(method, 0.0))

    def result(self) -> Any:
        self.scorer.slack[self.method] = time.monotonic() - self.sent  # the next such request may wait this long
        try:
            return ray.get(self.ref)
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
            return self.scorer._call(self.method, *self.args)  # died with the actor: retry


class ActorScorer:
    """The `Scorer` interface in a trial, backed by the sweep's shared actor."""

    def __init__(self, sweep_name: str, trial: str) -> None:
        self.handle = ray.get_actor(actor_name(sweep_name), namespace=NAMESPACE)
        self.trial = trial
        self.slack: dict[str, float] = {}  # per method: how long the loop last left a request unresolved
        self.name, self.vocab_signature = self._call("identity")

    def perplexity(self, requests: Sequence[ScoreRequest]) -> list[PerplexityResult]:
        result: list[PerplexityResult] = self._call("perplexity", self.trial, list(requests))
        return result

    def perplexity_gradients(self, token_ids: Sequence[Sequence[int]]) -> list[PerplexityGradient]:
        result: list[PerplexityGradient] = self._call(
            "perplexity_gradients", self.trial, [list(ids) for ids in token_ids]
        )
        return result

    def submit_perplexity(self, requests: Sequence[ScoreRequest]) -> _ActorPending:
        return _ActorPending(self, "perplexity", (self.trial, list(requests)))

    def submit_gradients(self, token_ids: Sequence[Sequence[int]]) -> _ActorPending:
        return _ActorPending(self, "perplexity_gradients", (self.trial, [list(ids) for ids in token_ids]))

    def _call(self, method: str, *args: Any) -> Any:
        for attempt in range(RETRIES + 1):
            try:
                return ray.get(getattr(self.handle, method).remote(*args))
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
                if attempt == RETRIES:
                    raise
                time.sleep(min(2.0**attempt, 10.0))  # the actor is restarting and reloading
        raise AssertionError("unreachable")
