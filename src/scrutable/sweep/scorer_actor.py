"""One shared perplexity model for a whole sweep: a named, async Ray actor.

Every trial talks to the same actor through `ActorScorer`, which implements the
`Scorer` interface of `scrutable.metrics.perplexity`, so a training loop cannot tell it
from the in-process `LocalScorer`. One copy of the scorer's weights serves all trials.

Batching: requests wait in a queue; a single worker task takes the first, then gathers
others for at most `max_wait_ms` or until `max_batch` sequences, and runs one forward
pass for all value requests (one forward + backward for all gradient requests). While a
batch computes, new requests pile up, so concurrent trials share passes. The actor counts
batch sizes and how many batches mixed requests from more than one trial.

The actor takes no CPU slot (`num_cpus=0`) so it never blocks a trial from starting,
restarts itself and reloads the model after a crash (`max_restarts`), and `ActorScorer`
retries a call that died with it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import ray

from scrutable.metrics.perplexity import (
    LocalScorer,
    PerplexityGradient,
    PerplexityResult,
    ScoreRequest,
)

NAMESPACE = "scrutable"
RETRIES = 5


def actor_name(sweep_name: str) -> str:
    return f"scorer-{sweep_name}"


@dataclass
class _Pending:
    kind: str  # "value" or "gradient"
    trial: str
    items: list[Any]
    future: asyncio.Future[list[Any]]


@dataclass
class BatchStats:
    batches: int = 0
    sequences: int = 0
    mixed_batches: int = 0  # batches holding requests of two or more trials
    trials_seen: set[str] = field(default_factory=set)

    def summary(self) -> dict[str, float]:
        return {
            "batches": self.batches,
            "sequences": self.sequences,
            "mean_batch_size": self.sequences / self.batches if self.batches else 0.0,
            "mixed_batch_share": self.mixed_batches / self.batches if self.batches else 0.0,
            "trials": len(self.trials_seen),
        }


class ScorerService:
    """The actor's body (plain class: Ray wraps it with `ray.remote` in `start_scorer`)."""

    def __init__(self, scorer: str, data_dir: str | None, max_batch: int, max_wait_ms: float) -> None:
        from scrutable.models import load_model

        self.local = LocalScorer(load_model(scorer, data_dir=data_dir), max_batch=max_batch)
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.stats = BatchStats()
        self.queue: asyncio.Queue[_Pending] | None = None
        self.worker: asyncio.Task[None] | None = None

    def identity(self) -> tuple[str, str]:
        return self.local.name, self.local.vocab_signature

    def batch_stats(self) -> dict[str, float]:
        return self.stats.summary()

    async def perplexity(self, trial: str, requests: list[ScoreRequest]) -> list[PerplexityResult]:
        return await self._submit("value", trial, list(requests))

    async def perplexity_gradients(self, trial: str, token_ids: list[list[int]]) -> list[PerplexityGradient]:
        return await self._submit("gradient", trial, list(token_ids))

    async def _submit(self, kind: str, trial: str, items: list[Any]) -> list[Any]:
        if self.queue is None:  # created lazily: the event loop exists only once calls arrive
            self.queue = asyncio.Queue()
            self.worker = asyncio.get_running_loop().create_task(self._serve())
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        await self.queue.put(_Pending(kind, trial, items, future))
        return await future

    async def _serve(self) -> None:
        assert self.queue is not None
        while True:
            batch = [await self.queue.get()]
            size = len(batch[0].items)
            deadline = time.monotonic() + self.max_wait
            while size < self.max_batch:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
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
        self.stats.mixed_batches += len(trials) > 1
        self.stats.trials_seen |= trials
        start = 0
        for pending in group:
            pending.future.set_result(results[start : start + len(pending.items)])
            start += len(pending.items)


def start_scorer(
    sweep_name: str, scorer: str, data_dir: str | None, *, num_gpus: float, max_batch: int, max_wait_ms: float
) -> Any:
    """Create (or reuse, on resume) the sweep's named scorer actor and wait until it is up."""
    remote_cls: Any = ray.remote(ScorerService)
    handle = remote_cls.options(
        name=actor_name(sweep_name),
        namespace=NAMESPACE,
        get_if_exists=True,
        num_cpus=0,
        num_gpus=num_gpus,
        max_restarts=-1,
        max_task_retries=RETRIES,
        max_concurrency=1000,
    ).remote(scorer, data_dir, max_batch, max_wait_ms)
    ray.get(handle.identity.remote())
    return handle


class ActorScorer:
    """The `Scorer` interface in a trial, backed by the sweep's shared actor."""

    def __init__(self, sweep_name: str, trial: str) -> None:
        self.handle = ray.get_actor(actor_name(sweep_name), namespace=NAMESPACE)
        self.trial = trial
        self.name, self.vocab_signature = self._call("identity")

    def perplexity(self, requests: Sequence[ScoreRequest]) -> list[PerplexityResult]:
        result: list[PerplexityResult] = self._call("perplexity", self.trial, list(requests))
        return result

    def perplexity_gradients(self, token_ids: Sequence[Sequence[int]]) -> list[PerplexityGradient]:
        result: list[PerplexityGradient] = self._call(
            "perplexity_gradients", self.trial, [list(ids) for ids in token_ids]
        )
        return result

    def _call(self, method: str, *args: Any) -> Any:
        for attempt in range(RETRIES + 1):
            try:
                return ray.get(getattr(self.handle, method).remote(*args))
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
                if attempt == RETRIES:
                    raise
                time.sleep(min(2.0**attempt, 10.0))  # the actor is restarting and reloading
        raise AssertionError("unreachable")
