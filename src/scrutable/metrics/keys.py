"""Metric and prompt keys, declared once. Every report, MLflow run, Optuna trial and Pareto
row uses these names.

`task/*` is task performance, `interp/*` scrutability, `faith/*` faithfulness, `train/*`
the optimiser's own signal, `prompt/*` which prompt a row describes. "unembedded" means
the prompt's nearest tokens. Every evaluation reports the metrics of exactly one prompt
(`trainables.record.PromptRecord`): the `task/`, `interp/`, `faith/` and `prompt/` values of
one row always describe the same prompt.

Task metric vs objective: the metric is what a task is judged by (accuracy, joint score);
it moves in coarse steps on a small dev split (1/32 on SST-2's 32 dev sentences) and ties
prompts that differ. The objective is a continuous score of the same predictions (mean
log-probability of the correct verbalizer; Yelp: the mean joint score), higher is better,
and is what sweeps optimise and best prompts are kept by.
"""

# --- task performance of the row's prompt (as delivered: soft for soft prompt tuning,
# hard tokens for PEZ and RLPrompt) and of its unembedded tokens.
TASK_DEV = "task/dev_metric"
TASK_DEV_UNEMBEDDED = "task/dev_metric_unembedded"
TASK_DEV_OBJECTIVE = "task/dev_objective"
TASK_DEV_OBJECTIVE_UNEMBEDDED = "task/dev_objective_unembedded"
TASK_TEST = "task/test_metric"
TASK_TEST_UNEMBEDDED = "task/test_metric_unembedded"
TASK_TEST_OBJECTIVE = "task/test_objective"

# --- what a prompt must beat: the task model with no prompt at all, on the same dev sample
# (in the final row; `sweep/frontier.py` takes the better of it and a uniform guess).
BASELINE_EMPTY_DEV = "baseline/empty_prompt_dev_metric"
BASELINE_EMPTY_DEV_OBJECTIVE = "baseline/empty_prompt_dev_objective"

# --- scrutability
PERPLEXITY = "interp/perplexity"  # of the unembedded prompt under the scorer LM
LOG_PERPLEXITY = "interp/log_perplexity"

# --- faithfulness (the paper's three measures, on the dev split)
DISTANCE_EUCLIDEAN = "faith/distance_euclidean"  # distance differential: mean L2 distance to the nearest token
DISTANCE_COSINE = "faith/distance_cosine"  # the same in cosine distance (1 - cosine similarity)
OUTPUT_MSE = "faith/output_mse"  # output differential: mean squared logit difference, whole vocabulary
OUTPUT_MSE_VERBALIZER = "faith/output_mse_verbalizer"  # the same over the task's answer tokens only
TOP1_AGREEMENT = "faith/top1_agreement"  # share of inputs whose predicted answer agrees
PERFORMANCE_DIFF = "faith/performance_diff"  # |metric(prompt) - metric(unembedded)|
PROMPT_NORM = "faith/prompt_norm"  # mean L2 norm of the prompt vectors
VOCAB_NORM = "faith/vocab_norm"  # mean L2 norm of the vocabulary embeddings, for scale

# --- the optimiser (means over the steps since the previous report)
TRAIN_LOSS = "train/loss"
TRAIN_TASK_LOSS = "train/task_loss"
TRAIN_REWARD = "train/reward"
TRAIN_STEP = "train/step"
TRAIN_PERPLEXITY = "train/perplexity"  # scorer perplexity of the prompts sampled in training
TRAIN_LOG_PERPLEXITY = "train/log_perplexity"  # their mean NLL: robust to the odd gibberish prompt
TRAIN_TASK_METRIC = "train/task_metric"  # task metric of the sampled prompts on their batch

# --- which prompt a row describes (strings and flags, not plotted)
PROMPT_TEXT = "prompt/text"  # the unembedded tokens, decoded
PROMPT_TOKEN_IDS = "prompt/token_ids"  # list of ints (a space-separated string in Tune results)
PROMPT_IS_SOFT = "prompt/is_soft"  # 1 for soft vectors, 0 for hard tokens
PROMPT_STEP = "prompt/step"  # the training step after which the prompt was evaluated
PROMPT_IS_BEST = "prompt/is_best"  # 1 in the final row: the best prompt on the dev objective

PROMPT_KEYS = (PROMPT_TEXT, PROMPT_TOKEN_IDS, PROMPT_IS_SOFT, PROMPT_STEP, PROMPT_IS_BEST)
FAITHFULNESS = (
    DISTANCE_EUCLIDEAN,
    DISTANCE_COSINE,
    OUTPUT_MSE,
    OUTPUT_MSE_VERBALIZER,
    TOP1_AGREEMENT,
    PERFORMANCE_DIFF,
    PROMPT_NORM,
    VOCAB_NORM,
)

NODE_ID = "ray/node_id"  # the Ray node a trial's report came from (a string, not in ALL_NUMERIC)

# Per-step values: step/<name> is train/<name> at every step (the train/* keys above average
# an evaluation interval). A trial reports them in batches between evaluations (`progress/*`);
# MLflow logs each at its own step.
STEP_PREFIX = "step/"
STEP_LOSS = "step/loss"
STEP_REWARD = "step/reward"
PROGRESS_STEP = "progress/step"  # the latest step in a progress report (no evaluation in it)
PROGRESS_HISTORY = "progress/history"  # JSON [[step, {"step/loss": ...}], ...] since the previous report

# The sweep's parent MLflow run.
PARETO_HYPERVOLUME = "pareto/hypervolume"  # against the reference stated in pareto.json
PARETO_FRONTIER_SIZE = "pareto/frontier_size"
SWEEP_TRIALS_COMPLETED = "sweep/trials_completed"
SWEEP_WALL_TIME = "sweep/wall_time_s"

ALL_NUMERIC = (
    TASK_DEV,
    TASK_DEV_UNEMBEDDED,
    TASK_DEV_OBJECTIVE,
    TASK_DEV_OBJECTIVE_UNEMBEDDED,
    TASK_TEST,
    TASK_TEST_UNEMBEDDED,
    TASK_TEST_OBJECTIVE,
    BASELINE_EMPTY_DEV,
    BASELINE_EMPTY_DEV_OBJECTIVE,
    PERPLEXITY,
    LOG_PERPLEXITY,
    *FAITHFULNESS,
    TRAIN_LOSS,
    TRAIN_TASK_LOSS,
    TRAIN_REWARD,
    TRAIN_STEP,
    TRAIN_PERPLEXITY,
    TRAIN_LOG_PERPLEXITY,
    TRAIN_TASK_METRIC,
    PROMPT_IS_SOFT,
    PROMPT_STEP,
    PROMPT_IS_BEST,
)

# Keys a sweep may optimise: the per-prompt numbers (train/* describe sampled prompts,
# not the row's prompt, and prompt/* are bookkeeping).
OBJECTIVE_CHOICES = tuple(k for k in ALL_NUMERIC if k.split("/")[0] in ("task", "interp", "faith"))
