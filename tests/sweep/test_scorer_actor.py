"""The shared scorer actor: one instance per sweep, exact answers, batches that mix the
concurrent trials' non-blocking requests, and batch counts that survive a restart."""

import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import ray

from scrutable.metrics.perplexity import LocalScorer, ScoreRequest
from scrutable.sweep.launcher import start_ray
from scrutable.sweep.scorer_actor import ActorScorer, start_scorer

from .test_sweep_e2e import smoke_spec

pytestmark = pytest.mark.slow
PROMPT = (15496, 995, 318)


@pytest.fixture(scope="module", autouse=True)
def _ray(tmp_path_factory):
    start_ray(smoke_spec("quickstart.yaml", tmp_path_factory.mktemp("ray")))
    yield
    ray.shutdown()


def actor(name, **kwargs):
    values = {"num_gpus": 0, "max_batch": 64, "max_wait_ms": 2000, **kwargs}
    return start_scorer(name, "tiny-gpt2", os.environ["SCRUTABLE_DATA_DIR"], **values)


def test_one_actor_per_sweep_with_exact_answers(tiny_gpt2):
    first, again = actor("exact"), actor("exact")
    assert first._actor_id == again._actor_id  # get_if_exists: one instance per sweep
    scorer = ActorScorer("exact", "trial-0")
    local = LocalScorer(tiny_gpt2)
    blocking = scorer.perplexity([ScoreRequest(token_ids=PROMPT)])[0].perplexity
    pending = scorer.submit_gradients([list(PROMPT)]).result()[0]
    assert blocking == pytest.approx(local.perplexity([ScoreRequest(token_ids=PROMPT)])[0].perplexity, rel=1e-5)
    expected = local.perplexity_gradients([list(PROMPT)])[0]
    assert pending.onehot_grad == pytest.approx(expected.onehot_grad, abs=1e-6)
    ray.kill(first, no_restart=True)


def test_overlapping_requests_of_concurrent_trials_share_batches():
    handle = actor("batching")

    def trial(name):  # a PEZ-like loop: submit, own work while the scorer computes, resolve
        scorer = ActorScorer("batching", name)
        values = []
        for step in range(4):
            pending = scorer.submit_gradients([list(PROMPT)])
            time.sleep(0.3 + 0.05 * step)  # the trial's task forward
            values.append(pending.result()[0].result.perplexity)
        return values

    with ThreadPoolExecutor(4) as pool:
        values = list(pool.map(trial, [f"trial-{i}" for i in range(4)]))
    assert all(v == pytest.approx(values[0][0]) for row in values for v in row)
    stats = ray.get(handle.batch_stats.remote())
    # The first round has no slack yet (nothing known about the loops); later rounds batch.
    assert stats["trials"] == 4 and stats["mixed_batch_share"] > 0.5 and stats["mean_batch_size"] > 2
    assert ray.get(handle.process_info.remote())["peak_rss_mib"] > 0
    ray.kill(handle, no_restart=True)


def test_batch_counts_survive_an_actor_restart(tmp_path):
    path = tmp_path / "scorer_stats.json"
    handle = actor("restart", stats_path=str(path))
    scorer = ActorScorer("restart", "trial-0")
    for _ in range(3):
        scorer.perplexity([ScoreRequest(token_ids=PROMPT)])
    before = ray.get(handle.batch_stats.remote())
    ray.kill(handle, no_restart=False)  # a crash: Ray restarts the actor, which reloads
    scorer.perplexity([ScoreRequest(token_ids=PROMPT)])  # retried until the actor is back
    after = ray.get(handle.batch_stats.remote())
    assert before["batches"] == 3 and after["batches"] == 4 and after["sequences"] == 4
    ray.kill(handle, no_restart=True)
