"""Learning is shown, not assumed: on a task a tiny model can learn, soft prompts and PEZ
lower the task loss and beat their initial accuracy; a large alpha ends at a lower prompt
perplexity than alpha = 0 with the same seeds."""

import pytest
import torch

from scrutable.metrics import keys
from scrutable.models import tiny_gpt2
from scrutable.tasks import DEFAULT_SEEDS, TASKS
from scrutable.tasks.base import Split
from scrutable.tasks.classification import ClassificationTask, LabeledExample
from scrutable.tasks.sst2 import make_sst2
from scrutable.trainables import pez, soft_prompt
from scrutable.trainables.common import cached_model, initial_prompt


def keyword_task(data_dir, label):
    """SST-2 sentences, but the answer is always the keyword `label`: only the prompt can
    move a frozen random model there, so the prompt must learn it."""
    sst2 = make_sst2(data_dir)

    def relabel(split):
        return lambda: [LabeledExample(e.text, label) for e in sst2.examples(split)[:32]]

    return ClassificationTask(
        name="keyword",
        verbalizers=sst2.verbalizers,
        formatter=sst2.formatter,
        loaders={split: relabel(split) for split in Split},
    )


@pytest.fixture
def hard_keyword(monkeypatch, data_dir):
    """Register the keyword task with the label the initial prompt gets wrong most."""

    def register(config):
        lm = cached_model(config.model, None)
        start = initial_prompt(lm, config, config.init, "", torch.Generator().manual_seed(config.seed))
        probe = keyword_task(data_dir, 0)
        with torch.no_grad():
            predicted = probe.output_logits(lm, start, probe.examples("train")).argmax(-1)
        label = 1 - int(predicted.float().mean().round())
        monkeypatch.setitem(TASKS, "keyword", lambda d, s, *options: keyword_task(data_dir, label))
        monkeypatch.setitem(DEFAULT_SEEDS, "keyword", 0)
        return keyword_task(data_dir, label).evaluate(lm, start, "dev").metric

    return register


@pytest.mark.parametrize(
    ("module", "extra"),
    [(soft_prompt, {}), (pez, {})],  # defaults; PEZ reports its best projected prompt
    ids=["soft_prompt", "pez"],
)
def test_learns_the_keyword(module, extra, hard_keyword):
    config_cls = soft_prompt.SoftPromptConfig if module is soft_prompt else pez.PezConfig
    config = config_cls(
        task="keyword",
        model="tiny-gpt2",
        scorer="tiny-gpt2",
        prompt_length=4,
        steps=30,
        eval_interval=10,
        batch_size=8,
        seed=1,
        **extra,
    )
    initial_accuracy = hard_keyword(config)
    reports = []
    result = module.run(config, report=reports.append)
    assert initial_accuracy <= 0.5
    assert reports[-1].metrics[keys.TRAIN_TASK_LOSS] < reports[0].metrics[keys.TRAIN_TASK_LOSS]
    assert result.metrics[keys.TASK_DEV] > initial_accuracy + 0.3
    # The default step size keeps the vectors at the vocabulary's scale (the card says so).
    low, high = result.card.vocab_norm_range
    assert low <= result.metrics[keys.PROMPT_NORM] <= high and result.card.norm_in_range


def pez_perplexity_by_alpha(scorer=None, **extra):
    """The final prompt's scorer perplexity at alpha 0 and 2, same seeds otherwise."""
    final = {}
    for alpha in (0.0, 2.0):
        config = pez.PezConfig(
            task="sst2",
            model="tiny-gpt2",
            scorer="tiny-gpt2",
            prompt_length=4,
            steps=25,
            eval_interval=25,
            batch_size=4,
            eval_limit=8,
            test_limit=8,
            alpha=alpha,
            seed=2,
            **extra,
        )
        reports = []
        pez.run(config, scorer=scorer, report=reports.append)
        final[alpha] = reports[-1].metrics[keys.PERPLEXITY]
    return final


def test_pez_alpha_lowers_prompt_perplexity(data_dir):
    """A peaked random scorer (same vocabulary) makes some token sequences far likelier."""
    from scrutable.metrics import LocalScorer

    final = pez_perplexity_by_alpha(LocalScorer(tiny_gpt2(data_dir, seed=5, initializer_range=0.5)))
    assert final[2.0] < final[0.0] / 2


def test_pez_task_model_fluency_lowers_own_perplexity():
    final = pez_perplexity_by_alpha(perplexity_source="task_model")
    assert final[2.0] < final[0.0]
