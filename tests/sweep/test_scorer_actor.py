"""The shared scorer actor: one instance per sweep, answers equal to a perplexity computed
by hand, batches that mix the concurrent trials' requests, and batch counts that survive a
restart. Every wait is on a condition (an actor that came back), never on a clock."""

import math
import os

import pytest
import ray
import torch
import torch.nn.functional as F
from ray._private import state as ray_state

from helpers import wait_for
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


def perplexity_by_hand(lm, ids):
    """exp of the mean NLL of each token given the start token and the tokens before it:
    one unbatched forward per token, reading only the last position's logits."""
    nll = []
    for i, token in enumerate(ids):
        context = torch.tensor([[lm.start_token_id, *ids[:i]]])
        with torch.no_grad():
            logits = lm.model(context).logits[0, -1]
        nll.append(-F.log_softmax(logits.double(), -1)[token].item())
    return math.exp(sum(nll) / len(nll))


def test_one_actor_per_sweep_with_exact_answers(tiny_gpt2):
    first, again = actor("exact"), actor("exact")
    assert first._actor_id == again._actor_id  # get_if_exists: one instance per sweep
    scorer = ActorScorer("exact", "trial-0")
    expected = perplexity_by_hand(tiny_gpt2, PROMPT)
    blocking = scorer.perplexity([ScoreRequest(token_ids=PROMPT)])[0]
    assert blocking.perplexity == pytest.approx(expected, rel=1e-5) and blocking.num_tokens == len(PROMPT)
    pending = scorer.submit_gradients([list(PROMPT)]).result()[0]
    assert pending.result.perplexity == pytest.approx(expected, rel=1e-5)
    # The gradient itself is checked against finite differences in tests/metrics; here: it
    # crosses the actor boundary unchanged.
    local = LocalScorer(tiny_gpt2).perplexity_gradients([list(PROMPT)])[0]
    assert pending.onehot_grad == pytest.approx(local.onehot_grad, abs=1e-6)
    ray.kill(first, no_restart=True)


def test_requests_that_can_wait_are_batched_across_the_active_trials(tiny_gpt2):
    """A request with slack waits until every recently active trial has one in the batch,
    so four trials' concurrent requests become one forward pass, however loaded the
    machine is (the slack, 600 s, is far above any delay)."""
    handle = actor("batching", max_wait_ms=600_000)
    trials = [f"trial-{i}" for i in range(4)]
    for trial in trials:  # one blocking call each (no slack): now all four are active
        ray.get(handle.perplexity_gradients.remote(trial, [list(PROMPT)], 0.0))
    rounds = 3
    for _ in range(rounds):  # all four submit without blocking, then resolve
        refs = [handle.perplexity_gradients.remote(trial, [list(PROMPT)], 600.0) for trial in trials]
        values = [result.result.perplexity for ref in refs for result in ray.get(ref)]
        assert values == pytest.approx([perplexity_by_hand(tiny_gpt2, PROMPT)] * 4, rel=1e-5)
    stats = ray.get(handle.batch_stats.remote())
    batches = len(trials) + rounds  # the four single calls, then one batch per round
    assert stats["trials"] == 4 and stats["batches"] == batches
    assert stats["sequences"] == len(trials) * (1 + rounds)
    assert stats["mixed_batch_share"] == pytest.approx(rounds / batches)
    assert ray.get(handle.process_info.remote())["peak_rss_mib"] > 0
    ray.kill(handle, no_restart=True)


def actor_pid(handle):
    """The actor's process id, or None while it is down or restarting."""
    try:
        return ray.get(handle.process_info.remote(), timeout=10)["pid"]
    except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError, ray.exceptions.GetTimeoutError):
        return None


def restarts(handle):
    return ray_state.actors(handle._actor_id.hex())["NumRestarts"]


def test_batch_counts_survive_an_actor_restart(tmp_path):
    path = tmp_path / "scorer_stats.json"
    handle = actor("restart", stats_path=str(path))
    scorer = ActorScorer("restart", "trial-0")
    for _ in range(3):
        scorer.perplexity([ScoreRequest(token_ids=PROMPT)])
    before = ray.get(handle.batch_stats.remote())  # also writes the counts to the file
    old_pid, restarts_before = actor_pid(handle), restarts(handle)
    ray.kill(handle, no_restart=False)  # a crash: Ray restarts the actor, which reloads
    # The fault took effect: a new process serves the actor, and Ray counted the restart.
    wait_for(lambda: actor_pid(handle) not in (None, old_pid), 300, "Ray to restart the scorer actor")
    assert restarts(handle) == restarts_before + 1
    assert before["batches"] == 3 and ray.get(handle.batch_stats.remote())["batches"] == 3  # reloaded
    scorer.perplexity([ScoreRequest(token_ids=PROMPT)])  # served by the restarted actor
    after = ray.get(handle.batch_stats.remote())
    assert after["batches"] == 4 and after["sequences"] == 4
    ray.kill(handle, no_restart=True)
