"""The real recipe's CPU rehearsal through the CLI: conf/long_cot.yaml + conf/smoke/cpu.yaml on two
gloo processes: FSDP2 with sequence parallelism, one vLLM engine per tensor-parallel group synced
from the shards, partial rollouts, the length curriculum, the curriculum sampler, math-verify."""

import os

import pytest
import torch
from k15_cli import CONF, data_args, k15, same, scalars

RUN = ["fit", "-c", str(CONF / "long_cot.yaml"), "-c", str(CONF / "smoke/cpu.yaml")]


def final_state(checkpoint) -> tuple[dict, dict]:
    """(every rank's replay buffer, the data module's state: success table, sampler, streams)."""
    meta = torch.load(checkpoint / "meta.pt", weights_only=False)
    data = next(value for key, value in meta.items() if key.endswith("DataModule"))
    return meta["callbacks"]["RolloutCallback"], data


@pytest.mark.vllm
@pytest.mark.multiprocess
@pytest.mark.usefixtures("one_tp_engine_at_a_time")
@pytest.mark.timeout(900)
def test_the_long_cot_rehearsal_trains_logs_both_ranks_and_resumes(shard_dir, tmp_path, master_port):
    env = os.environ | {"MASTER_PORT": str(master_port)}
    k15(*RUN, *data_args(shard_dir), "--trainer.logger.init_args.name=whole", cwd=tmp_path, env=env)
    logged = scalars(tmp_path / "runs/whole/version_0")
    # both ranks' rollouts: at iteration 0 every one of the 2 × 4 prompts is either finished or buffered
    started = logged["rollout/groups_finished"][0].value + logged["rollout/buffer_groups"][0].value
    assert started == 2 * 4
    assert [e.value for e in logged["rollout/response_cap"]] == [16, 16, 24]  # the length curriculum
    assert max(e.value for e in logged["rollout/stale_token_share"]) > 0  # partial rollouts spanned versions
    diffs = [e.value for e in logged["rollout/engine_logp_abs_diff"]]
    assert diffs and max(diffs) <= 1e-4  # every engine samples the policy the trainer holds
    assert max(e.value for e in logged["train/grad_norm"]) > 0 and "heldout/accuracy" in logged

    # resumed from the sharded checkpoint after iteration 2, it ends in the same RL state
    checkpoints = tmp_path / "runs/whole/version_0/checkpoints"
    k15(
        *RUN,
        *data_args(shard_dir),
        "--trainer.logger.init_args.name=resumed",
        f"--ckpt_path={checkpoints / 'epoch=0-step=2.ckpt'}",
        cwd=tmp_path,
        env=env,
    )
    whole, resumed = (
        final_state(checkpoints / "epoch=0-step=3.ckpt"),
        final_state(tmp_path / "runs/resumed/version_0/checkpoints/epoch=0-step=3.ckpt"),
    )
    assert len(whole[0]["buffers"]) == 2 and any(buffer["groups"] for buffer in whole[0]["buffers"])
    assert same(whole[0], resumed[0]) and same(whole[1], resumed[1])
