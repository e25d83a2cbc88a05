"""Metric keys, declared once. Every report, MLflow run and sweep objective uses these.

`task/*` is task performance, `interp/*` scrutability, `faith/*` faithfulness,
`train/*` the optimiser's own signal. "unembedded" means the prompt's nearest tokens.
"""

TASK_DEV = "task/dev_metric"  # the prompt as optimised (continuous for soft prompts)
TASK_DEV_UNEMBEDDED = "task/dev_metric_unembedded"
TASK_TEST = "task/test_metric"
TASK_TEST_UNEMBEDDED = "task/test_metric_unembedded"

PERPLEXITY = "interp/perplexity"  # of the unembedded prompt under the scorer LM
LOG_PERPLEXITY = "interp/log_perplexity"

DISTANCE = "faith/distance"  # distance differential: mean distance to the nearest token
OUTPUT_MSE = "faith/output_mse"  # output differential: mean squared logit difference
TOP1_AGREEMENT = "faith/top1_agreement"  # output differential: same argmax share
PERFORMANCE_DIFF = "faith/performance_diff"  # |metric(soft) - metric(unembedded)|

TRAIN_LOSS = "train/loss"
TRAIN_TASK_LOSS = "train/task_loss"
TRAIN_REWARD = "train/reward"
TRAIN_STEP = "train/step"
TRAIN_PERPLEXITY = "train/perplexity"  # scorer perplexity of the prompts sampled in training
TRAIN_LOG_PERPLEXITY = "train/log_perplexity"  # their mean NLL: robust to the odd gibberish prompt
TRAIN_TASK_METRIC = "train/task_metric"  # task metric of the sampled prompts on their batch

ALL_NUMERIC = (
    TASK_DEV,
    TASK_DEV_UNEMBEDDED,
    TASK_TEST,
    TASK_TEST_UNEMBEDDED,
    PERPLEXITY,
    LOG_PERPLEXITY,
    DISTANCE,
    OUTPUT_MSE,
    TOP1_AGREEMENT,
    PERFORMANCE_DIFF,
    TRAIN_LOSS,
    TRAIN_TASK_LOSS,
    TRAIN_REWARD,
    TRAIN_STEP,
    TRAIN_PERPLEXITY,
    TRAIN_LOG_PERPLEXITY,
    TRAIN_TASK_METRIC,
)
