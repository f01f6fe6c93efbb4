"""The real CLI on the real configs: both tiny stages, an overlay, resume, print_config, bad configs."""

import json
import math
import os
from pathlib import Path

import pytest
import torch
import yaml
from k15_cli import (
    CONF,
    SMALL_MODEL,
    SMALL_RL,
    checkpoint_weights,
    data_args,
    exported_weights,
    k15,
    printed_config,
    scalars,
)
from transformers import AutoModelForCausalLM, AutoTokenizer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, shard_dir):
    """Stage 1 through the CLI, in a scratch working directory."""
    cwd = tmp_path_factory.mktemp("run")
    args = [
        "--data.init_args.steps=4",
        "--trainer.val_check_interval=2",
        "--trainer.log_every_n_steps=1",
        "--model.init_args.heldout_max_new_tokens=16",
    ]
    k15(
        "fit",
        "-c",
        str(CONF / "tiny_sft.yaml"),
        *data_args(shard_dir),
        "--data.init_args.examples_per_step=8",
        *SMALL_MODEL,
        *args,
        cwd=cwd,
    )
    return cwd


def test_sft_stage_exports_a_loadable_model_and_a_summary(sft_run):
    model = AutoModelForCausalLM.from_pretrained(sft_run / "runs/tiny_sft/hf")
    assert model.config.hidden_size == 64
    summary = json.loads((sft_run / "runs/tiny_sft/version_0/summary.json").read_text())
    assert set(summary) >= {"heldout_acc_before", "heldout_acc_after", "wall_s", "tokens_per_s"}
    assert summary["steps"] == 4 and summary["tokens_per_s"] > 0
    logged = scalars(sft_run / "runs/tiny_sft/version_0")
    assert len(logged["heldout/accuracy"]) == 2 and "train/loss" in logged


CHECKPOINT_EVERY_ITERATION = """
trainer:
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {every_n_train_steps: 2, save_top_k: -1}
    - class_path: k15.export.ExportPretrained
      init_args: {dirpath: runs/tiny/hf}
    - class_path: k15.summary.RunSummary
"""


def test_rl_stage_logs_checkpoints_exports_and_resumes(sft_run, shard_dir):
    (sft_run / "ckpt.yaml").write_text(CHECKPOINT_EVERY_ITERATION)
    rl = [
        "fit",
        "-c",
        str(CONF / "tiny.yaml"),
        "-c",
        "ckpt.yaml",
        *data_args(shard_dir),
        *SMALL_RL,
        "--data.init_args.iterations=3",
        "--trainer.val_check_interval=3",
        "--model.init_args.passes_per_iteration=2",
    ]
    k15(*rl, cwd=sft_run)
    log_dir = sft_run / "runs/tiny/version_0"
    logged = scalars(log_dir)
    for tag in (
        "rollout/reward",
        "rollout/accuracy",
        "rollout/response_len_mean",
        "rollout/response_len_max",
        "rollout/tokens_per_s",
        "train/loss",
        "train/log_ratio_mean",
        "train/log_ratio_abs_max",
        "heldout/accuracy",
    ):
        assert tag in logged, tag
    assert len(logged["rollout/reward"]) == 3
    # the policy's entropy over the trained tokens: positive, below log V (uniform over the vocabulary)
    vocab = len(AutoTokenizer.from_pretrained(sft_run / "runs/tiny_sft/hf"))
    assert all(0 < s.value < math.log(vocab) for s in logged["train/entropy"]) and len(logged["train/entropy"]) == 3
    # the reward's breakdown: each term's weighted part, and the share of each reason
    shares = [
        logged[f"reward/correct/{why}"][-1].value
        for why in ("match", "mismatch", "no_answer")
        if f"reward/correct/{why}" in logged
    ]
    assert abs(sum(shares) - 1) < 1e-6 and logged["reward/correct"][-1].value == logged["rollout/accuracy"][-1].value
    assert "reward/length" in logged and "reward/repetition/clean" in logged
    assert "rollout/samples/text_summary" in logged["__text__"]
    summary = json.loads((log_dir / "summary.json").read_text())
    assert summary["steps"] == 3 * 2  # iterations × passes_per_iteration (full-batch steps)
    # Lightning's logger step counts batches = RL iterations: the sanity pass before training at 0,
    # then the evaluation after the last iteration (index 2)
    heldout = logged["heldout/accuracy"]
    assert [s.step for s in heldout] == [0, 2]
    assert [s.step for s in logged["rollout/reward"]] == [0, 1, 2]
    assert (summary["heldout_acc_before"], summary["heldout_acc_after"]) == pytest.approx(
        (heldout[0].value, heldout[1].value)
    )
    AutoModelForCausalLM.from_pretrained(sft_run / "runs/tiny/hf")

    # resume from the checkpoint taken after iteration 1 of 3: the run does iterations 2 and 3 only
    k15(*rl, f"--ckpt_path={log_dir}/checkpoints/epoch=0-step=2.ckpt", cwd=sft_run)
    resumed = scalars(sft_run / "runs/tiny/version_1")
    assert [s.step for s in resumed["rollout/reward"]] == [s.step for s in logged["rollout/reward"]][1:]
    assert json.loads((sft_run / "runs/tiny/version_1/summary.json").read_text())["steps"] == 6


def test_loss_and_verifier_swapped_by_overlays_train(sft_run, shard_dir):
    """GRPO's loss and math-verify's verifier by two overlays; the verifier's counters reach
    TensorBoard every iteration (``reward/verifier/*``) and at evaluation (``heldout/verifier/*``)."""
    overlays = [
        "fit",
        "-c",
        str(CONF / "tiny.yaml"),
        "-c",
        str(CONF / "loss/grpo.yaml"),
        "-c",
        str(CONF / "reward/math.yaml"),
        *data_args(shard_dir),
        *SMALL_RL,
        "--data.init_args.iterations=1",
        "--trainer.val_check_interval=1",
        "--trainer.logger.init_args.name=grpo",
    ]
    config = yaml.safe_load(k15(*overlays, "--print_config", cwd=sft_run).stdout)["model"]["init_args"]
    assert config["loss"]["class_path"] == "k15.losses.GRPOLoss"
    assert config["reward"]["init_args"]["verifier"]["class_path"] == "k15.reward.math.MathVerify"
    k15(*overlays, cwd=sft_run)
    logged = scalars(sft_run / "runs/grpo/version_0")
    assert "train/loss" in logged
    # every response of the iteration checked once (P·k = 4·4), none timed out; the 12 held-out answers
    assert [(s.step, s.value) for s in logged["reward/verifier/checks"]] == [(0, 16.0)]
    assert [s.value for s in logged["reward/verifier/timeouts"]] == [0.0]
    assert [s.value for s in logged["heldout/verifier/checks"]] == [12.0]


def test_kl_to_initial_is_zero_at_the_start_and_grows_as_the_policy_moves(sft_run, shard_dir):
    """``model.init_args.kl_to_initial``: a frozen copy of the starting policy scores every
    rollout; the first step runs at θ = θ_init (KL 0), later ones after updates (KL > 0)."""
    k15(
        "fit", "-c", str(CONF / "tiny.yaml"), *data_args(shard_dir), *SMALL_RL,
        "--model.init_args.kl_to_initial=k15.losses.KLToInitial",
        "--model.init_args.kl_to_initial.init_args.beta=0.1",
        "--model.init_args.optimizer.init_args.lr=0.01",
        "--data.init_args.iterations=3", "--trainer.val_check_interval=3",
        "--trainer.logger.init_args.name=kl", "--trainer.callbacks=[k15.summary.RunSummary]",
        cwd=sft_run,
    )  # fmt: skip
    kl = [s.value for s in scalars(sft_run / "runs/kl/version_0")["train/kl_to_initial"]]
    assert len(kl) == 3 and abs(kl[0]) < 1e-6 and kl[2] > 1e-4, kl


# top-level overlays, and the configs they go on
TOP_OVERLAYS = {
    "qlora.yaml": ["tiny.yaml"],
    "long_cot_qlora_1gpu.yaml": ["long_cot.yaml", "qlora.yaml"],
    "tiny_long.yaml": ["tiny.yaml"],
    "short_cot.yaml": ["tiny.yaml", "tiny_long.yaml"],
}
RECIPES = sorted(p.relative_to(CONF) for p in CONF.glob("*.yaml") if p.name not in TOP_OVERLAYS)
OVERLAYS = sorted(p.relative_to(CONF) for p in CONF.glob("*/*.yaml")) + sorted(map(Path, TOP_OVERLAYS))
OVERLAID = {"sft": "tiny_sft.yaml", "smoke": "long_cot.yaml"}  # the recipe an overlay folder applies to (else tiny)


def base_configs(overlay: Path) -> list[str]:
    under = TOP_OVERLAYS.get(str(overlay)) or [OVERLAID.get(overlay.parts[0], "tiny.yaml")]
    return [arg for name in under for arg in ("-c", str(CONF / name))]


@pytest.mark.parametrize("config", RECIPES + OVERLAYS, ids=str)
def test_every_config_parses_and_print_config_round_trips(config, tmp_path):
    stack = [] if config in RECIPES else base_configs(config)
    first = printed_config(*stack, "-c", str(CONF / config))
    (tmp_path / "printed.yaml").write_text(first)
    assert printed_config("-c", str(tmp_path / "printed.yaml")) == first


@pytest.mark.parametrize(
    "override, names",
    [
        (["--model.init_args.no_such_key=1"], ["no_such_key"]),
        (["--trainer.devices=${data.no_such_key}"], ["trainer.devices", "data.no_such_key"]),
        (["--model.init_args.passes_per_iteration=two"], ["passes_per_iteration", "two"]),
        (["--model.init_args.loss.class_path=k15.losses.NoSuchLoss"], ["loss", "NoSuchLoss"]),
        (["-c", "conf/does_not_exist.yaml"], ["does_not_exist.yaml"]),
        (["--model.init_args.model.init_args.path=/no/model/here"], ["Pretrained.path", "/no/model/here"]),
        # a model built from config, so the reward is reached even where no SFT export exists (CI)
        (
            [
                "--model.init_args.model=k15.models.TinyQwen2",
                "--model.init_args.model.init_args.alphabet=0123456789+=,:AQ",
                "--model.init_args.reward.init_args.shaping=[{class_path: k15.reward.FormatReward, init_args: "
                "{weight: 0.5}}]",
            ],
            ["shaping", "pattern"],
        ),
        (
            [
                "--model.init_args.model=k15.models.TinyQwen2",
                "--model.init_args.model.init_args.alphabet=0123456789+=,:AQ",
                "--model.init_args.reward.init_args.shaping=[k15.reward.LengthPenalty, k15.reward.LengthPenalty]",
            ],
            ["reward.shaping", "length"],
        ),
    ],
)
def test_bad_config_is_one_clear_message(override, names):
    result = k15("fit", "-c", "conf/tiny.yaml", *override, check=False)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) < 15, result.stderr
    for name in names:
        assert name in result.stderr, result.stderr


FSDP2_FIT = ["fit", "-c", str(CONF / "tiny.yaml"), "-c", str(CONF / "strategy/fsdp2.yaml")]


@pytest.mark.multiprocess
def test_fsdp2_strategy_drops_in_by_overlay(sft_run, shard_dir, master_port):
    """Two gloo processes, the policy sharded with fully_shard (FSDP2Strategy), the same
    manual-optimization update loop; the export gathers the full weights: exactly the trained
    ones, as the run's final (sharded) checkpoint holds them."""
    k15(
        *FSDP2_FIT,
        "-c",
        str(CONF / "reward/math.yaml"),
        *data_args(shard_dir),
        *SMALL_RL,
        "--data.init_args.iterations=2",
        "--trainer.val_check_interval=2",
        "--trainer.logger.init_args.name=fsdp2",
        "--trainer.callbacks=[{class_path: lightning.pytorch.callbacks.ModelCheckpoint, init_args: "
        "{every_n_train_steps: 1, save_top_k: -1}}, "
        "{class_path: k15.export.ExportPretrained, init_args: {dirpath: runs/fsdp2/hf}}, k15.summary.RunSummary]",
        cwd=sft_run,
        env=os.environ | {"MASTER_PORT": str(master_port)},
    )
    logged = scalars(sft_run / "runs/fsdp2/version_0")
    assert len(logged["rollout/reward"]) == 2 and "heldout/accuracy" in logged
    # each rank judges its own P·k = 16 responses: the counters are the sum over both ranks
    assert [s.value for s in logged["reward/verifier/checks"]] == [32.0, 32.0]
    assert [s.value for s in logged["heldout/verifier/checks"]] == [12.0]
    exported = AutoModelForCausalLM.from_pretrained(sft_run / "runs/fsdp2/hf")
    assert exported.config.hidden_size == 64
    assert json.loads((sft_run / "runs/fsdp2/version_0/summary.json").read_text())["steps"] == 2
    trained, weights = (
        checkpoint_weights(sft_run / "runs/fsdp2/version_0/checkpoints/epoch=0-step=2.ckpt"),
        exported_weights(sft_run / "runs/fsdp2/hf"),
    )
    assert weights.keys() <= trained.keys() and all(torch.equal(trained[key], weights[key]) for key in weights)
    before = AutoModelForCausalLM.from_pretrained(sft_run / "runs/tiny_sft/hf").state_dict()
    assert any(not torch.equal(before[key], weights[key]) for key in weights)  # it did train


@pytest.mark.multiprocess
def test_sequence_parallel_run_trains_through_the_cli(shard_dir, tmp_path, master_port):
    """FSDP2Strategy with sequence_parallel_size 2 on two gloo processes: one sequence-parallel
    group (data parallel 1), every packed row split between the ranks (Ulysses), the group
    training on the union of both ranks' rollouts. (Exactness against one process is
    tests/test_sequence_parallel.py's; this is the wiring: strategy, mesh, rollouts, export.)"""
    shape = {"hidden_size": 64, "num_layers": 2, "num_heads": 2, "num_kv_heads": 2, "intermediate_size": 128}
    init_args = ", ".join(f"{key}: {value}" for key, value in shape.items())
    model = f"{{class_path: k15.models.TinyQwen2, init_args: {{alphabet: '0123456789+=,:AQ', {init_args}}}}}"
    k15(
        *FSDP2_FIT,
        *data_args(shard_dir),
        *SMALL_RL,
        f"--model.init_args.model={model}",
        "--model.init_args.reward.init_args.shaping=[{class_path: k15.reward.LengthPenalty, init_args: {weight: 0.5}}]",
        "--model.init_args.max_tokens_per_micro_batch=64",
        "--trainer.strategy.init_args.sequence_parallel_size=2",
        "--data.init_args.iterations=2",
        "--trainer.val_check_interval=2",
        "--trainer.logger.init_args.name=sp",
        "--trainer.callbacks=[{class_path: k15.export.ExportPretrained, init_args: {dirpath: runs/sp/hf}}, "
        "k15.summary.RunSummary]",
        cwd=tmp_path,
        env=os.environ | {"MASTER_PORT": str(master_port)},
    )
    assert json.loads((tmp_path / "runs/sp/version_0/summary.json").read_text())["steps"] == 2
    trained = exported_weights(tmp_path / "runs/sp/hf")
    from k15.models import TinyQwen2

    initial = TinyQwen2("0123456789+=,:AQ", **shape).model().state_dict()
    assert any(not torch.equal(initial[key], trained[key]) for key in trained)


@pytest.mark.multiprocess
def test_curriculum_sampler_stays_identical_across_two_processes(sft_run, shard_dir, master_port):
    """Every rank draws from its own copy of the sampler; after each iteration's outcomes the
    ranks compare their success tables and generator states (a mismatch stops the run)."""
    k15(
        *FSDP2_FIT,
        "-c",
        str(CONF / "data/curriculum.yaml"),
        *data_args(shard_dir),
        *SMALL_RL,
        "--data.init_args.iterations=3",
        "--trainer.val_check_interval=3",
        "--data.init_args.stages=[{until: 1, max_difficulty: 2}, {until: null}]",
        "--trainer.logger.init_args.name=fsdp_curriculum",
        "--trainer.callbacks=[k15.summary.RunSummary]",
        cwd=sft_run,
        env=os.environ | {"MASTER_PORT": str(master_port)},
    )
    logged = scalars(sft_run / "runs/fsdp_curriculum/version_0")
    assert [s.value for s in logged["data/stage"]] == [0.0, 1.0, 1.0] and len(logged["rollout/reward"]) == 3


@pytest.mark.vllm
def test_vllm_engine_overlay_trains_and_reports_engine_trainer_mismatch(sft_run, shard_dir):
    k15(
        "fit",
        "-c",
        str(CONF / "tiny.yaml"),
        "-c",
        str(CONF / "engine/vllm.yaml"),
        *data_args(shard_dir),
        *SMALL_RL,
        "--data.init_args.iterations=2",
        "--trainer.val_check_interval=2",
        "--trainer.logger.init_args.name=vllm",
        # a big step that surely happens (the length reward makes every group's rewards differ):
        # a stale engine would then disagree with the trainer by far more than the bounds below
        "--model.init_args.optimizer.init_args.lr=0.05",
        "--model.init_args.reward.init_args.shaping=[{class_path: k15.reward.LengthPenalty, init_args: {weight: 1.0}}]",
        "--trainer.callbacks=[k15.summary.RunSummary]",
        cwd=sft_run,
    )
    logged = scalars(sft_run / "runs/vllm/version_0")
    assert len(logged["rollout/reward"]) == 2
    # the engine was re-synced after iteration 0's update: both iterations sample the trainer's π_θi
    assert all(s.value < 1e-3 for s in logged["rollout/engine_logp_abs_diff"]), logged["rollout/engine_logp_abs_diff"]
    assert all(0 <= s.value < 1e-5 for s in logged["rollout/engine_kl"])


@pytest.mark.vllm
def test_off_policy_overlay_weights_stale_segments_and_logs_the_weights(sft_run, shard_dir):
    """Partial rollouts on vLLM with ``conf/off_policy/tis.yaml``: iteration 0 samples with π_θi
    itself (every weight 1, none clipped); later iterations train on segments an older policy
    sampled after large steps, whose weights π_θi/μ move away from 1, truncated at C."""
    k15(
        "fit", "-c", str(CONF / "tiny.yaml"), "-c", str(CONF / "engine/vllm.yaml"),
        "-c", str(CONF / "rollout/partial.yaml"), "-c", str(CONF / "off_policy/tis.yaml"),
        *data_args(shard_dir), *SMALL_RL,
        "--model.init_args.rollout.init_args.segment_tokens=6",
        "--model.init_args.optimizer.init_args.lr=0.05",
        "--model.init_args.reward.init_args.shaping=[{class_path: k15.reward.LengthPenalty, init_args: {weight: 1.0}}]",
        "--data.init_args.iterations=4", "--trainer.val_check_interval=4",
        "--trainer.logger.init_args.name=tis", "--trainer.callbacks=[k15.summary.RunSummary]",
        cwd=sft_run,
    )  # fmt: skip
    logged = scalars(sft_run / "runs/tis/version_0")
    weights = {s.step: s.value for s in logged["train/is_weight_mean"]}
    clipped = {s.step: s.value for s in logged["train/is_clipped_share"]}
    stale = {s.step: s.value for s in logged["rollout/stale_token_share"]}
    assert weights and all(0 < w <= 2.0 for w in weights.values()), weights
    assert all(0 <= c <= 1 for c in clipped.values()), clipped
    fresh = [step for step in weights if stale[step] == 0]
    assert all(abs(weights[step] - 1) < 1e-3 and clipped[step] == 0 for step in fresh), (weights, clipped, stale)
    assert any(abs(weights[step] - 1) > 1e-3 for step in weights if stale[step] > 0), (weights, stale)
