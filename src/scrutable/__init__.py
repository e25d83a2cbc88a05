"""scrutable: map how readable a trainable prompt can be before it stops working.

Soft prompts beat hand-written prompts but read as gibberish once each vector is mapped
to its nearest vocabulary token. scrutable measures that gap (faithfulness and
scrutability, see `scrutable.metrics`), trains prompts under a perplexity penalty
(`scrutable.trainables`) and sweeps the penalty and prompt length with Ray Tune and
Optuna to trace the task-performance vs. perplexity frontier (`scrutable.sweep`).
"""

__version__ = "0.1.0"
