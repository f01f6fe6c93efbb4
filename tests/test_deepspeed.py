"""ZeRO3Strategy (k15/deepspeed.py): the overlay parses and builds the strategy, its DeepSpeed config
validates and a misspelt key is named, and k15's update trains through DeepSpeed's own ZeRO-3 engine.

Lightning refuses DeepSpeed on anything but CUDA (``DeepSpeedStrategy.setup_environment``), so the
engine runs on DeepSpeed's CPU accelerator with 2 gloo processes, twice: without Lightning but as it
would drive it (the model built in the strategy's ``model_sharded_context``, the whole update inside
one ``engine.forward`` as Lightning's ``training_step`` is, each backward through the strategy's
``pre_backward`` then ``engine.backward``, each step ``engine.step()``), held against one plain-torch
process; and through ``k15 fit`` itself, with Lightning's three CUDA-only steps replaced
(tests/deepspeed_on_cpu.py).
"""

import os

import pytest
import torch
from k15_cli import CONF, ROOT, SMALL_RL, data_args, k15, scalars
from test_update import ROLLOUT_ARGS, TAU, K, rollout_of

from k15.cli import parsed_config
from k15.deepspeed import ZeRO3Strategy
from k15.finite import FiniteGuard, all_finite
from k15.losses import KimiLoss
from k15.models import Pretrained
from k15.reward.rewards import Rewards
from k15.rollout.batch import Rollout
from k15.update import update_policy

OVERLAY = CONF / "strategy/deepspeed_zero3.yaml"
ZERO3_FIT = ["fit", "-c", str(CONF / "tiny.yaml"), "-c", str(OVERLAY)]


def zero3_on_cpu_env(master_port: int) -> dict:
    """A ``k15 fit`` subprocess on DeepSpeed's CPU accelerator that can import tests/deepspeed_on_cpu.py."""
    tests_first = os.pathsep.join(filter(None, [str(ROOT / "tests"), os.environ.get("PYTHONPATH")]))
    return os.environ | {"PYTHONPATH": tests_first, "DS_ACCELERATOR": "cpu", "MASTER_PORT": str(master_port)}


def test_the_overlay_parses_over_the_tiny_recipe_and_builds_the_strategy():
    cfg = parsed_config(["-c", str(CONF / "tiny.yaml"), "-c", str(OVERLAY)])
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.precision is None  # bf16 is the strategy's
    node = cfg.trainer.strategy
    assert node.class_path == "k15.deepspeed.ZeRO3Strategy"
    strategy = ZeRO3Strategy(**node.init_args.as_dict())
    zero = strategy.config["zero_optimization"]
    assert zero["stage"] == 3 and "offload_param" not in zero and "offload_optimizer" not in zero
    assert strategy.config["bf16"] == {"enabled": True}
    assert strategy.config["data_types"] == {"grad_accum_dtype": "fp32"}


def test_offload_and_config_overrides_reach_the_deepspeed_config():
    strategy = ZeRO3Strategy(
        offload_parameters=True,
        offload_optimizer=True,
        config={"zero_optimization": {"stage3_max_live_parameters": 10**8}, "bf16": {"enabled": False}},
    )
    zero = strategy.config["zero_optimization"]
    assert zero["offload_param"]["device"] == zero["offload_optimizer"]["device"] == "cpu"
    assert zero["stage3_max_live_parameters"] == 10**8 and zero["stage"] == 3  # merged, not replaced
    assert strategy.config["bf16"] == {"enabled": False}


@pytest.mark.parametrize(
    "config, key",
    [
        ({"gradient_clipping_norm": 1.0}, "config.gradient_clipping_norm"),  # DeepSpeed alone would ignore it
        ({"zero_optimization": {"stage3_param_persistance_threshold": 0}}, "config.zero_optimization.stage3_param_"),
        ({"zero_optimization": {"offload_param": {"devic": "cpu"}}}, "config.zero_optimization.offload_param.devic"),
        ({"bf16": {"enabld": True}}, "config.bf16.enabld"),
        ({"zero_optimization": {"stage": 2}}, "config.zero_optimization.stage"),
        ({"gradient_clipping": 1.0}, "config.gradient_clipping: k15 sets this itself, from model.gradient_clip_norm"),
        ({"optimizer": {"type": "AdamW"}}, "config.optimizer"),
    ],
)
def test_a_bad_deepspeed_setting_names_its_key(config, key):
    with pytest.raises(ValueError, match=f"trainer.strategy.init_args.{key}"):
        ZeRO3Strategy(config=config)


def test_trainer_precision_other_than_32_true_is_refused_before_anything_runs():
    """bf16 is the strategy's: Lightning's bf16 under DeepSpeed would also cast the rewards."""
    from lightning.pytorch.plugins.precision import DeepSpeedPrecision

    strategy = ZeRO3Strategy()
    strategy.precision_plugin = DeepSpeedPrecision("bf16-mixed")
    with pytest.raises(ValueError, match="trainer.precision is 'bf16-mixed'.*trainer.strategy.init_args.bf16"):
        strategy.setup_environment()


# ---- DeepSpeed's ZeRO-3 engine on 2 CPU processes ---------------------------------------------

LR, MOMENTUM, CLIP = 0.5, 0.9, 0.5
ROW_FIELDS = ("input_ids", "attention_mask", "loss_mask", "versions", "completion_lengths", "finish_reasons", "texts")


def half_rollout(rank: int, rewards: torch.Tensor | None = None) -> Rollout:
    """Rank ``rank``'s prompt group of ``ROLLOUT_ARGS`` (``rewards``: replaced, e.g. by NaN)."""
    rollout = rollout_of(*ROLLOUT_ARGS)
    rows = slice(rank * K, (rank + 1) * K)
    total = rollout.rewards.total[rank : rank + 1] if rewards is None else rewards
    return Rollout(
        **{
            **vars(rollout),
            **{key: getattr(rollout, key)[rows] for key in ROW_FIELDS},
            "rewards": Rewards(total, total, {}, {}),
            "prompts": rollout.prompts[rank : rank + 1],
            "keys": [None],
        }
    )


def kimi_update(model, rollout, optimizer, seed: int, guard: FiniteGuard, **ranks):
    """One iteration of k15's update with this file's settings; ``ranks``: a sharded run's
    ``backward``, ``agree`` and ``most``."""
    return update_policy(
        model,
        rollout,
        KimiLoss(TAU),
        optimizer,
        None,
        generator=torch.Generator().manual_seed(seed),
        guard=guard,
        passes=2,
        max_tokens_per_micro_batch=12,
        gradient_clip_norm=CLIP,
        **ranks,
    )


def iterations(update, rollout_of_iteration) -> list:
    """Three RL iterations: a good one, one whose rewards are NaN (every step dropped), a good one;
    the optimizer state reset at each (SGD's momentum carries over between the two steps of one)."""
    return [update(rollout_of_iteration(i), seed=i) for i in range(3)]


def _zero3_rank(rank: int, model_dir: str, port: int, strategy_args: dict, results) -> None:
    os.environ.update(DS_ACCELERATOR="cpu", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2")
    torch.set_num_threads(1)
    import deepspeed
    import torch.distributed as dist

    from k15.rollout.weights import full_weights, zero3_full_weights

    deepspeed.init_distributed("gloo", verbose=False)
    strategy = ZeRO3Strategy(**strategy_args)
    with strategy.model_sharded_context():  # where Lightning runs configure_model
        model = Pretrained(model_dir).model().train()

    class Module(torch.nn.Module):  # the LightningModule: the policy as .model, training_step as forward
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, training_step):
            return [training_step()]

    config = strategy.config | {"gradient_accumulation_steps": 1, "gradient_clipping": 0.0}  # Lightning's additions
    module = Module()
    engine, *_ = deepspeed.initialize(
        model=module,
        optimizer=torch.optim.SGD(module.parameters(), lr=LR, momentum=MOMENTUM),
        config=config,
        dist_init_required=False,
    )
    strategy.model = engine

    class LightningOptimizer:  # Lightning's wrapper of the DeepSpeed optimizer: its step is engine.step()
        optimizer = engine.optimizer

        @staticmethod
        def step():
            engine.step()

    def backward(loss):  # Lightning's manual_backward under DeepSpeedStrategy
        strategy.pre_backward(loss)
        engine.backward(loss)

    def reduce(value: int, op) -> int:
        value = torch.tensor(value)
        dist.all_reduce(value, op=op)
        return int(value)

    before = dict(full_weights(model, 1 << 14, torch.float32))  # as the engine sync reads them

    def update(rollout, seed):
        def training_step():
            return kimi_update(
                model,
                rollout,
                LightningOptimizer,
                seed,
                guard,
                backward=backward,
                agree=lambda ok: bool(reduce(int(ok), dist.ReduceOp.MIN)),
                most=lambda count: reduce(count, dist.ReduceOp.MAX),
            )

        (stats,) = engine(training_step)
        return stats.grad_norms, stats.skipped_steps

    guard = FiniteGuard(3)
    nan = torch.full((1, K), float("nan"), dtype=torch.float64)
    steps = iterations(update, lambda i: half_rollout(rank, nan if i == 1 else None))
    # many small buckets: every rank must walk the same gathers in the same order
    after = dict(zero3_full_weights(model, 1 << 14, torch.float32))
    partitions = {n: p.ds_tensor.numel() for n, p in model.named_parameters()}
    # the checkpoint/export guard reads each rank's partitions (outside a gather a parameter is empty)
    finite = all_finite(model.parameters())
    next(model.parameters()).ds_tensor.view(-1)[0] = float("nan") if rank == 1 else 0.0
    results[rank] = (before, after, steps, partitions, (finite, all_finite(model.parameters())))
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize(
    "strategy_args, rtol, weight_rtol",
    [
        ({"bf16": False, "param_persistence_threshold": 0}, 1e-5, 1e-5),
        # bf16 keeps 8 significant bits: a weight rounds to within 2^-8 of its fp32 master weight. The
        # embedding (1280 elements), biases and norms stay whole; the projections are partitioned
        (
            {"bf16": True, "offload_parameters": True, "offload_optimizer": True, "param_persistence_threshold": 1500},
            0.02,
            2**-8,
        ),
    ],
    ids=["fp32", "bf16 offload"],
)
def test_zero3_on_two_cpu_ranks_updates_as_one_process(tiny_dir, master_port, strategy_args, rtol, weight_rtol):
    """Each rank trains on its own prompt group with the policy partitioned by ZeRO-3: the
    gradients are averaged over ranks, so θ' must be one plain-torch process's θ' on both groups
    (up to summation order in fp32; to bf16's rounding in bf16), the same on every rank, with the
    same pre-clip gradient norms (clipping active), the NaN iteration's steps dropped on every rank,
    and the micro-batches' gradients summed (several a step: each of ≤ 12 tokens). Tolerances:
    ``rtol`` of the norms, and of the largest weight change for each weight's error, on top of
    ``weight_rtol`` of the weight itself."""
    import torch.multiprocessing as mp

    results = mp.Manager().dict()
    args = (str(tiny_dir), master_port, strategy_args, results)
    mp.spawn(_zero3_rank, args=args, nprocs=2)

    single = Pretrained(str(tiny_dir)).model().train()
    optimizer = torch.optim.SGD(single.parameters(), lr=LR, momentum=MOMENTUM)
    guard = FiniteGuard(3)
    rollout = rollout_of(*ROLLOUT_ARGS)
    nan = rollout_of(ROLLOUT_ARGS[0], [[float("nan")] * K] * 2)

    def update(rollout, seed):
        stats = kimi_update(single, rollout, optimizer, seed, guard)
        return stats.grad_norms, stats.skipped_steps

    expected_steps = iterations(update, lambda i: nan if i == 1 else rollout)
    (before, after, steps, local, finite), (_, after_1, steps_1, _, finite_1) = results[0], results[1]
    assert finite == (True, True) and finite_1 == (True, False)  # a NaN in rank 1's partition is seen there
    expected = single.state_dict()

    assert after.keys() == expected.keys()
    assert sum(local.values()) < sum(p.numel() for p in single.parameters())  # partitioned, not replicated
    assert [skipped for _, skipped in steps] == [skipped for _, skipped in steps_1] == [0, 2, 0]
    norms, norms_1, expected_norms = (torch.tensor([n for n, _ in s]) for s in (steps, steps_1, expected_steps))
    torch.testing.assert_close(norms, norms_1, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(norms, expected_norms, rtol=rtol, atol=0, equal_nan=True)
    assert norms[1].isnan().all() and (norms[[0, 2]] > CLIP).all()  # clipping was active
    scale = max((expected[name] - before[name]).abs().max() for name in expected)
    assert scale > 1e-3  # the update moved the weights
    for name, weight in after.items():
        torch.testing.assert_close(weight, after_1[name], rtol=0, atol=0)  # every rank holds the same θ'
        torch.testing.assert_close(weight, expected[name], rtol=weight_rtol, atol=rtol * scale, msg=name)


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.vllm
def test_the_tiny_recipe_trains_through_lightning_with_zero3_on_two_cpu_processes(
    tiny_dir, shard_dir, tmp_path, master_port
):
    """``k15 fit`` over the overlay, the whole Lightning path (configure_model under zero.Init,
    transformers told of ZeRO-3; every micro-batch's backward in one training_step; DeepSpeed
    checkpoints), with Lightning's three CUDA-only steps replaced (tests/deepspeed_on_cpu.py): the
    first update moves the weights, and vLLM on each rank, synced from the partitions before each
    iteration, scores the sampled tokens as the trainer does."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from transformers import AutoModelForCausalLM

    k15(
        *ZERO3_FIT,
        "--trainer.accelerator=cpu",
        "--trainer.devices=2",
        "--trainer.strategy=deepspeed_on_cpu.ZeRO3OnCPU",
        "--trainer.strategy.init_args.bf16=false",  # vLLM on CPUs runs fp32: engine and trainer then agree exactly
        "--trainer.strategy.init_args.param_persistence_threshold=0",  # else the tiny model's tensors all stay whole
        f"--model.init_args.model.init_args.path={tiny_dir}",
        # a random policy is never correct: a length reward makes the advantages (and gradient) non-zero
        "--model.init_args.reward.init_args.shaping=[{class_path: k15.reward.LengthPenalty, init_args: {weight: 1}}]",
        *data_args(shard_dir),
        *SMALL_RL,
        "--data.init_args.iterations=2",
        "--trainer.val_check_interval=2",
        "--trainer.logger.init_args.name=zero3",
        "--trainer.callbacks=[{class_path: lightning.pytorch.callbacks.ModelCheckpoint, init_args: "
        "{every_n_train_steps: 1, save_top_k: -1}}, "
        "{class_path: k15.export.ExportPretrained, init_args: {dirpath: runs/zero3/hf}}, k15.summary.RunSummary]",
        cwd=tmp_path,
        env=zero3_on_cpu_env(master_port),
    )
    run = tmp_path / "runs/zero3/version_0"
    logged = scalars(run)
    assert len(logged["train/grad_norm"]) == 2 and logged["train/grad_norm"][0].value > 0
    assert [s.value < 1e-5 for s in logged["rollout/engine_logp_abs_diff"]] == [True, True]
    initial = AutoModelForCausalLM.from_pretrained(tiny_dir).state_dict()
    trained = get_fp32_state_dict_from_zero_checkpoint(run / "checkpoints/epoch=0-step=1.ckpt", tag="checkpoint")
    assert {name.removeprefix("model.") for name in trained} <= initial.keys()
    assert any(not torch.equal(weight, initial[name.removeprefix("model.")]) for name, weight in trained.items())
    # the export gathers the fp32 master weights from the partitions: those of the last checkpoint
    final = get_fp32_state_dict_from_zero_checkpoint(run / "checkpoints/epoch=0-step=2.ckpt", tag="checkpoint")
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "runs/zero3/hf").state_dict()
    assert exported.keys() == initial.keys()
    for name, weight in final.items():
        torch.testing.assert_close(exported[name.removeprefix("model.")], weight, rtol=0, atol=0, msg=name)


@pytest.mark.slow
def test_lora_under_zero3_is_refused_by_name(tiny_dir, shard_dir, tmp_path, master_port):
    """ZeRO-3 builds every parameter as an empty partition: there is no weight to quantize or wrap."""
    result = k15(
        *ZERO3_FIT,
        "-c",
        str(CONF / "qlora.yaml"),
        "--trainer.accelerator=cpu",
        "--trainer.devices=1",
        "--trainer.strategy=deepspeed_on_cpu.ZeRO3OnCPU",
        "--trainer.strategy.init_args.bf16=false",
        f"--model.init_args.model.init_args.path={tiny_dir}",
        *data_args(shard_dir),
        cwd=tmp_path,
        check=False,
        env=zero3_on_cpu_env(master_port),
    )
    assert result.returncode != 0
    assert "model.lora" in result.stderr and "ZeRO3Strategy" in result.stderr, result.stderr[-2000:]
