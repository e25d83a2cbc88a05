"""PEZ (Wen et al. 2023, "Hard Prompts Made Easy") with a perplexity regulariser.

Keep a continuous prompt P (L, D). Each step:
1. project every P_i to its nearest vocabulary embedding by cosine similarity (as the
   reference): ids = argmax_v cos(P_i, E_v), P' = E[ids];
2. run the frozen model with P' and take the task loss;
3. hand the gradient taken at P' straight to P (straight-through) and step AdamW
   (reference: lr 0.1, weight decay 0.1).
Every evaluation measures the projected prompt (a hard prompt: what PEZ delivers); the best
one on the dev objective is kept and reported at the end (`trainables/record.py`).
Projection is by cosine, as the reference; the reported distance differentials are the
same for every method (both distances, `card.py`).

The paper's "unembedded gradient descent" adds alpha times a perplexity term of the
projected tokens: J = task loss + alpha * ppl_term(ids). A perplexity of decoded text
under `no_grad` is a constant and would change no gradient, so the term's gradient is
taken with respect to the token choice:
- `perplexity_source: scorer` (default): the scorer returns G = d mean_NLL / d onehot(ids)
  (L, V); it reaches P through a straight-through relaxation of the projection,
  onehot ~ softmax(cos(P, E) / tau), so dJ/dP = alpha * J_softmax^T G. This needs the
  scorer to share the task model's vocabulary (distilgpt2 with gpt2 ... gpt2-xl; SmolLM2
  with itself); otherwise alpha > 0 is refused.
- `perplexity_source: task_model`: the reference's cheap fluency loss, the task model's
  own NLL of the projected tokens, differentiable through P' (causal task models only).
`perplexity_term: log` (default) penalises mean NLL = log perplexity, which stays on the
task loss's scale; `raw` penalises perplexity itself (gradient scaled by the perplexity).

    from scrutable.trainables.pez import PezConfig, run
    result = run(PezConfig(task="sst2", model="smollm2-135m", scorer="smollm2-135m", alpha=0.1))
"""

from __future__ import annotations

import math
from typing import Unpack

import torch
import torch.nn.functional as F

from scrutable.errors import UserError
from scrutable.metrics import keys
from scrutable.metrics.perplexity import PerplexityGradient
from scrutable.metrics.unembed import Distance, project_to_vocabulary
from scrutable.models import LanguageModel, ModelKind
from scrutable.trainables.common import Loop, RunIO, Setup, TrainResult, initial_prompt
from scrutable.trainables.configs import PezConfig as PezConfig  # its home is torch-free

SCORERS_BY_VOCABULARY = "distilgpt2 or gpt2: gpt2, gpt2-medium, gpt2-large, gpt2-xl; smollm2-135m: smollm2-135m"


def check_compatible(s: Setup, config: PezConfig) -> None:
    if config.alpha == 0:
        return
    if config.perplexity_source == "scorer" and s.scorer.vocab_signature != s.lm.vocab_signature:
        raise UserError(
            f"PEZ with alpha > 0 needs a scorer that shares the task model's vocabulary, and "
            f"{config.scorer} does not share {config.model}'s: compatible scorers are {SCORERS_BY_VOCABULARY}; "
            "or set perplexity_source: task_model"
        )
    if config.perplexity_source == "task_model" and s.lm.kind is not ModelKind.CAUSAL:
        raise UserError(
            f"perplexity_source: task_model needs a causal task model, and {config.model} is seq2seq: "
            "use perplexity_source: scorer"
        )


def scorer_term(
    s: Setup, config: PezConfig, prompt: torch.Tensor, answer: PerplexityGradient
) -> tuple[torch.Tensor, float]:
    """(differentiable surrogate with the term's value, perplexity) via the scorer's G."""
    grad = torch.from_numpy(answer.onehot_grad).to(device=prompt.device, dtype=prompt.dtype)  # (L, V)
    value = answer.result.mean_nll
    if config.perplexity_term == "raw":
        grad, value = grad * answer.result.perplexity, answer.result.perplexity
    vocabulary = s.lm.embedding_matrix.to(prompt.dtype)  # (V, D); the prompt is float32
    similarity = F.normalize(prompt, dim=-1) @ F.normalize(vocabulary, dim=-1).T  # (L, V)
    relaxed = torch.softmax(similarity / config.relaxation_temperature, dim=-1)
    surrogate = (relaxed * grad).sum()
    return value + surrogate - surrogate.detach(), answer.result.perplexity


def task_model_term(
    lm: LanguageModel, config: PezConfig, projected: torch.Tensor, ids: torch.Tensor
) -> tuple[torch.Tensor, float]:
    """The task model's own mean NLL of the projected tokens, differentiable through them."""
    start = lm.embedding_matrix[lm.start_token_id].unsqueeze(0)  # (1, D)
    inputs = torch.cat([start, projected[:-1].to(lm.dtype)]).unsqueeze(0)  # (1, L, D)
    log_probs = F.log_softmax(lm.model(inputs_embeds=inputs).logits[0, :, : lm.vocab_size].float(), dim=-1)
    mean_nll = -log_probs.gather(-1, ids.unsqueeze(-1)).mean()
    perplexity = math.exp(float(mean_nll.detach()))
    return (mean_nll.exp() if config.perplexity_term == "raw" else mean_nll), perplexity


def make_schedule(optimizer: torch.optim.Optimizer, config: PezConfig) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The learning-rate schedule over `config.steps` optimizer steps; None for a constant rate."""
    if config.lr_schedule == "constant":
        return None
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.steps, eta_min=0.0)


def run(config: PezConfig, **io: Unpack[RunIO]) -> TrainResult:
    # --- setup --------------------------------------------------------------------------
    loop = Loop(config, **io)
    s = loop.s
    check_compatible(s, config)
    prompt = torch.nn.Parameter(initial_prompt(s.lm, config, config.init, config.init_text, loop.generator))
    optimizer = torch.optim.AdamW([prompt], lr=config.learning_rate, weight_decay=config.weight_decay)
    schedule = make_schedule(optimizer, config)
    # A constant step has no scheduler, so checkpoints written before schedules existed resume.
    loop.start(prompt=prompt, optimizer=optimizer, **({} if schedule is None else {"schedule": schedule}))
    embeddings = s.lm.embedding_matrix
    if config.eval_at_start and loop.step == 0:
        ids = project_to_vocabulary(prompt, embeddings, Distance.COSINE)[0]
        loop.evaluate(embeddings[ids], is_soft=False, token_ids=ids)

    # --- train --------------------------------------------------------------------------
    while not loop.done:
        batch = loop.batch()
        ids, projected = project_to_vocabulary(prompt, embeddings, Distance.COSINE)
        uses_scorer = config.alpha > 0 and config.perplexity_source == "scorer"
        gradient = s.scorer.submit_gradients([ids.tolist()]) if uses_scorer else None  # computed meanwhile
        task_loss = s.task.loss(s.lm, projected, batch)
        loss = task_loss
        if config.alpha > 0:
            if gradient is not None:
                term, _ = scorer_term(s, config, prompt, gradient.result()[0])
            else:
                term, _ = task_model_term(s.lm, config, projected, ids)
            loss = task_loss + config.alpha * term
        optimizer.zero_grad()
        loss.backward()
        loop.optimizer_step(optimizer)
        if schedule is not None:
            schedule.step()
        values = {keys.TRAIN_LOSS: float(loss.detach()), keys.TRAIN_TASK_LOSS: float(task_loss.detach())}
        if loop.step_finished(values):
            # PEZ delivers the projected (hard) prompt: that is the prompt evaluated and kept.
            ids = project_to_vocabulary(prompt, embeddings, Distance.COSINE)[0]
            loop.evaluate(embeddings[ids], is_soft=False, token_ids=ids)

    # --- cleanup ------------------------------------------------------------------------
    return loop.result()
