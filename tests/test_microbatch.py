"""Length-bucketed micro-batches: a partition within budget, and the same loss (so the same
gradient) as one pass over the whole step."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from k15.logprobs import token_logprobs
from k15.losses import GRPOLoss, KimiLoss
from k15.microbatch import micro_batches
from k15.models import Pretrained

lengths_and_budget = st.tuples(st.lists(st.integers(1, 60), min_size=1, max_size=40), st.integers(1, 400))


@given(lengths_and_budget)
def test_micro_batches_partition_the_rows_within_budget(case):
    lengths, budget = torch.tensor(case[0]), case[1]
    rows = torch.randperm(len(lengths))[: max(1, len(lengths) // 2 + 1)]
    batches = micro_batches(lengths, rows, budget)
    assert sorted(torch.cat(batches).tolist()) == sorted(rows.tolist())
    for mb in batches:
        assert len(mb) == 1 or int(lengths[mb].max()) * len(mb) <= budget
    assert micro_batches(lengths, rows, None)[0].tolist() == rows.tolist()


@settings(deadline=None)
@given(lengths_and_budget, st.integers(0, 2**31 - 1))
def test_micro_batch_losses_weighted_by_share_sum_to_the_whole_step_loss(case, seed):
    lengths, budget = torch.tensor(case[0]), case[1]
    n, width = len(lengths), int(lengths.max())
    g = torch.Generator().manual_seed(seed)
    logp, ref_logp = -torch.rand(n, width, generator=g), -torch.rand(n, width, generator=g)
    mask = (torch.arange(width)[None, :] < lengths[:, None]).float() * (torch.rand(n, width, generator=g) > 0.3)
    advantages = torch.randn(n, generator=g)
    rows = torch.arange(n)
    for loss in (KimiLoss(tau=0.5), GRPOLoss()):
        whole = loss(logp, ref_logp, mask, advantages)
        parts = sum(
            loss(
                logp[mb, : int(lengths[mb].max())],
                ref_logp[mb, : int(lengths[mb].max())],
                mask[mb, : int(lengths[mb].max())],
                advantages[mb],
            )
            * loss.micro_batch_weight(mask[mb], mask[rows])
            for mb in micro_batches(lengths, rows, budget)
        )
        torch.testing.assert_close(parts, whole, atol=1e-5, rtol=1e-5)


def test_trimming_right_padding_leaves_log_probs_unchanged(tiny_dir):
    model = Pretrained(str(tiny_dir)).model()
    ids = torch.randint(0, 16, (3, 12))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 4:] = 0
    full = token_logprobs(model, ids, mask)
    for row, length in ((1, 7), (2, 4)):
        trimmed = token_logprobs(model, ids[row : row + 1, :length], mask[row : row + 1, :length])
        torch.testing.assert_close(trimmed[0], full[row, :length], atol=1e-5, rtol=0)
