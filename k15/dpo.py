"""DPO for long2short (k1.5 §2.4): prefer the shortest correct response over wrong and much longer ones.

For a pair (x, y_w, y_l) — y_w chosen, y_l rejected (``k15.data.long2short``) — with sequence
log-probs summed over the response tokens, log π(y | x) = Σ_t log π(y_t | x, y_<t):

    r_w = β · (log π_θ(y_w | x) − log π_ref(y_w | x))        the implicit rewards
    r_l = β · (log π_θ(y_l | x) − log π_ref(y_l | x))
    L   = −log σ(r_w − r_l)                                   averaged over the B pairs of a step

π_ref is the policy DPO starts from, frozen (``ReferenceModule(mode="initial")``). At π_θ = π_ref
every r is 0 and L = log 2; descending L raises log π_θ(y_w) and lowers log π_θ(y_l), each pair
weighted by σ(r_l − r_w): most where the policy still ranks the pair wrongly.
"""

from __future__ import annotations

from typing import NamedTuple

import torch.nn.functional as F
from torch import Tensor

from k15.data.preference import PreferenceBatch
from k15.data.sft import IGNORE_INDEX
from k15.language_module import LanguageModule
from k15.logprobs import token_logprobs
from k15.metrics import log_iteration
from k15.reference import ReferenceModule


class DPOTerms(NamedTuple):
    loss: Tensor  # L, a scalar: the mean over pairs
    chosen_rewards: Tensor  # [B] r_w, detached
    rejected_rewards: Tensor  # [B] r_l, detached


def dpo_loss(
    policy_chosen: Tensor, policy_rejected: Tensor, reference_chosen: Tensor, reference_rejected: Tensor, beta: float
) -> DPOTerms:
    """L = mean_b −log σ(β[(log π_θ(y_w) − log π_ref(y_w)) − (log π_θ(y_l) − log π_ref(y_l))]).

    Each argument is [B] sequence log-probs (summed over the response tokens); β > 0 sets how far
    the policy may move from π_ref for a given margin. ``logsigmoid`` keeps large margins finite.
    """
    chosen = beta * (policy_chosen - reference_chosen)
    rejected = beta * (policy_rejected - reference_rejected)
    loss = -F.logsigmoid(chosen - rejected).mean()
    return DPOTerms(loss, chosen.detach(), rejected.detach())


def sequence_logprobs(logp: Tensor, labels: Tensor) -> Tensor:
    """[N, T] token log-probs → [N] log π(y | x), summed over the response tokens (labels ≠ −100)."""
    return (logp * (labels != IGNORE_INDEX)).sum(dim=-1)


class DPOModule(LanguageModule):
    """Direct preference optimisation on preference pairs (``k15.data.preference``).

    Logs ``train/dpo_loss``, ``train/reward_margin`` (mean r_w − r_l) and
    ``train/preference_accuracy`` (share of pairs with r_w > r_l; 0 at the first step, where
    π_θ = π_ref), and the held-out accuracy as every ``LanguageModule`` does.

    Args:
        beta: β of the implicit reward; larger keeps π_θ closer to π_ref.
        *args, **kwargs: see ``LanguageModule`` (model, optimizer, lora, …).
    """

    def __init__(self, *args, beta: float = 0.1, **kwargs):
        super().__init__(*args, **kwargs)
        if not beta > 0:
            raise ValueError(f"model.beta must be > 0, got {beta}")
        self.beta = beta
        # one pass over all rows in order (no token budget): the batch's model_inputs then line up
        self.reference = ReferenceModule(mode="initial")

    def configure_model(self) -> None:
        super().configure_model()
        self.reference.attach(self.model)  # π_ref: the starting policy, frozen

    def training_step(self, batch: PreferenceBatch, batch_idx: int):
        inputs, chunk = (batch.input_ids, batch.attention_mask), self.logprob_chunk_tokens
        logp = token_logprobs(self.model, *inputs, chunk_tokens=chunk, **batch.model_inputs)
        ref_logp = self.reference(self.model, *inputs, lambda rows: batch.model_inputs, chunk_tokens=chunk)
        policy, reference = sequence_logprobs(logp, batch.labels), sequence_logprobs(ref_logp, batch.labels)
        terms = dpo_loss(*policy.chunk(2), *reference.chunk(2), self.beta)  # rows: B chosen, then B rejected
        step = self.trainer.fit_loop.epoch_loop.batch_progress.total.completed
        if not self.guard.allows(terms.loss, agree=self.agree):
            log_iteration(self.trainer, {"train/skipped_steps": self.guard.skipped}, step)
            return None  # Lightning then takes no backward and no optimizer step
        margin = terms.chosen_rewards - terms.rejected_rewards
        metrics = {
            "train/dpo_loss": terms.loss.detach(),
            "train/reward_margin": margin.mean(),
            "train/preference_accuracy": (margin > 0).float().mean(),
            "train/skipped_steps": self.guard.skipped,
        }
        log_iteration(self.trainer, metrics, step)
        self.log("loss", terms.loss, prog_bar=True, logger=False, batch_size=len(batch))
        return terms.loss
