"""``python -m k15 plan``: the memory arithmetic on hand-computed cases and real (meta-device or tiny)
models, the searches, and the command line."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from k15_cli import CONF, ROOT, k15
from transformers import AutoConfig, Qwen2Config, Qwen2ForCausalLM

from k15 import memory, plan
from k15.cli import parsed_config
from k15.memory import GIB, Setup, Shape

pytestmark = pytest.mark.timeout(120)

QWEN7B = CONF / "models/Qwen/Qwen2.5-7B"
PLAN_7B = str(CONF / "plan/qwen2.5_7b_128k.yaml")


def qwen2(shape: Shape) -> Qwen2Config:
    return Qwen2Config(
        vocab_size=shape.vocab,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        max_position_embeddings=shape.max_positions,
        tie_word_embeddings=shape.tied,
    )


def numel(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "shape",
    [
        Shape(vocab=20, hidden=64, layers=2, heads=2, kv_heads=1, head_dim=32, intermediate=128),
        Shape(vocab=97, hidden=48, layers=3, heads=4, kv_heads=4, head_dim=12, intermediate=80, tied=False),
    ],
)
def test_parameters_of_a_tiny_qwen2_are_its_numel(shape):
    assert memory.parameter_count(shape) == numel(Qwen2ForCausalLM(qwen2(shape)))


def test_parameters_of_the_7b_config_and_the_tiny_sources(alphabet):
    shape, dtype = plan.pretrained_shape(str(QWEN7B), "model")
    with torch.device("meta"):  # the shape, no memory
        built = Qwen2ForCausalLM(AutoConfig.from_pretrained(QWEN7B))
    assert memory.parameter_count(shape) == numel(built) == 7_615_616_512
    assert (shape.max_positions, shape.tied, dtype) == (32_768, False, "bfloat16")
    assert plan.pretrained_shape("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "model")[0] == replace(
        shape, max_positions=131_072
    )

    from k15.models import TinyQwen2, TinyVLM

    for cls, args in ((TinyQwen2, {"num_layers": 2}), (TinyVLM, {"vision_layers": 1, "hidden_size": 64})):
        text = alphabet + (" " if cls is TinyVLM else "")
        source = cls(text, **args)
        shape, _ = plan.model_shape(cls.__name__, plan.defaults(cls) | {"alphabet": text, **args}, "m")
        assert memory.parameter_count(shape) == numel(source.model())
        assert shape.vocab == len(source.tokenizer())


def test_kv_cache_bytes_per_token():
    shape, _ = plan.pretrained_shape(str(QWEN7B), "model")
    assert memory.kv_bytes_per_token(shape, 2) == 2 * 28 * 4 * 128 * 2 == 57_344
    assert memory.kv_bytes_per_token(shape, 2, tp=2) == 57_344 // 2
    assert memory.kv_bytes_per_token(shape, 2, tp=8) == 57_344 // 4  # 4 KV heads over 8 GPUs: one head each


@pytest.mark.parametrize(
    ("dtype", "checkpointing"), [(torch.float32, False), (torch.bfloat16, False), (torch.float32, True)]
)
def test_saved_activations_match_the_autograd_graph(dtype, checkpointing):
    """What the forward saves for backward (tensors outside the parameters, each storage once)
    against the per-token formula, on the real log-prob path."""
    from k15.language_module import checkpoint_decoder_layers
    from k15.logprobs import token_scores

    shape = Shape(vocab=300, hidden=64, layers=2, heads=2, kv_heads=1, head_dim=32, intermediate=128)
    model = Qwen2ForCausalLM(qwen2(shape)).to(dtype).train()
    if checkpointing:
        checkpoint_decoder_layers(model)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    tokens = 512
    ids = torch.randint(0, shape.vocab, (1, tokens), generator=torch.Generator().manual_seed(0))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        token_scores(model, ids, torch.ones_like(ids), 1.0, 64)
    per_token = memory.activation_bytes_per_token(shape, dtype.itemsize, checkpointing)["saved"] - memory.SCALAR_BYTES
    assert sum(saved.values()) / tokens == pytest.approx(per_token, rel=0.05)


def test_state_is_sharded_over_the_fsdp_ranks():
    shape = Shape(vocab=1000, hidden=64, layers=2, heads=2, kv_heads=1, head_dim=32, intermediate=128)
    n = memory.parameter_count(shape)
    for shards in (1, 2, 8):
        lines = memory.breakdown(Setup(shape=shape, context=256, gpu=False, shards=shards, fsdp=shards > 1))["lines"]
        assert lines["parameters"] == lines["gradients"] == n * 4 / shards
        assert lines["optimizer"] == 2 * n * 4 / shards
    offloaded = memory.breakdown(Setup(shape=shape, context=256, shards=2, fsdp=True, cpu_offload=True))
    assert offloaded["lines"]["parameters"] == offloaded["lines"]["optimizer"] == 0
    assert offloaded["host"] == 4 * n * 4 / 2  # parameters, gradients, 2 optimizer states


def test_head_and_tokens_by_hand():
    shape = Shape(vocab=1000, hidden=64, layers=1, heads=2, kv_heads=1, head_dim=32, intermediate=128)
    head = memory.head_bytes(shape, tokens=4096, chunk=128, b=4)
    assert head["head_forward"] == 3 * 128 * 1000 * 4 + 4096 * 64 * 4
    assert head["head_backward"] == 4 * 1000 * 64 + 4096 * 64 * 4 + 128 * 1000 * 4
    setup = Setup(shape=shape, context=131_072, sp=4, micro_batch_tokens=8192)
    assert memory.tokens_per_gpu(setup) == 32_768  # a 128k trajectory over 4 SP ranks
    assert memory.tokens_per_gpu(replace(setup, context=1000)) == 2048  # shorter ones packed to the budget, split
    assert memory.tokens_per_gpu(replace(setup, micro_batch_tokens=None, rows=3, sp=1, context=100)) == 300


def test_the_7b_plan_at_128k_needs_sp_2():
    setup, notes = plan.read_setup(parsed_config(["-c", PLAN_7B]))
    assert (setup.world, setup.sp, setup.shards, setup.param_dtype, setup.context) == (8, 2, 8, "bfloat16", 131_072)
    assert memory.sp_degrees(setup) == [1, 2, 4]
    assert memory.fits(setup) and not memory.fits(replace(setup, sp=1))
    assert memory.smallest_sp(setup) == 2
    largest = memory.largest_context(setup)
    assert largest >= 131_072 and memory.fits(replace(setup, context=largest))
    assert not memory.fits(replace(setup, context=largest + 1))
    b = memory.breakdown(setup)
    assert b["tokens_per_gpu"] == 65_536 and b["lines"]["vllm (update)"] == 0  # vLLM sleeps on GPUs
    assert b["rollout_peak"] == pytest.approx(b["trainer_resident"] + 0.6 * 80 * GIB)


def test_the_plan_reads_the_config_fit_would_run():
    """The same parser as ``fit``: an overlay that swaps a class drops the old class's arguments,
    overrides apply, and every class's defaults are filled."""
    cfg = parsed_config(["-c", str(CONF / "long_cot.yaml"), "-c", str(CONF / "smoke/cpu.yaml")])
    source, args = plan.component(cfg, "model.init_args.model")  # Pretrained swapped for TinyQwen2
    assert source == "TinyQwen2" and args["num_kv_heads"] == 2 and "path" not in args and "chat_template" not in args
    assert plan.component(cfg, "trainer.strategy")[1]["sequence_parallel_size"] == 2
    cfg = parsed_config(["-c", str(CONF / "tiny.yaml"), "-c", str(CONF / "strategy/fsdp2.yaml")])
    assert plan.component(cfg, "trainer.strategy")[1]["sequence_parallel_size"] == 1
    cfg = parsed_config(["-c", str(CONF / "tiny.yaml"), "--model.init_args.activation_checkpointing=true"])
    assert plan.get(cfg, "model.init_args.activation_checkpointing") is True


contexts = st.integers(1, 1 << 20)


@settings(max_examples=60, deadline=None)
@given(
    layers=st.integers(1, 48),
    hidden=st.sampled_from([64, 512, 4096]),
    kv=st.sampled_from([1, 2, 8]),
    vocab=st.integers(100, 200_000),
    context=contexts,
    more=contexts,
    checkpointing=st.booleans(),
    budget=st.sampled_from([None, 4096]),
    bf16=st.booleans(),
)
def test_memory_grows_with_the_context(layers, hidden, kv, vocab, context, more, checkpointing, budget, bf16):
    shape = Shape(vocab, hidden, layers, 8, kv, hidden // 8, 4 * hidden, tied=False)
    setup = Setup(shape=shape, context=context, checkpointing=checkpointing, micro_batch_tokens=budget)
    setup = replace(setup, param_dtype="bfloat16" if bf16 else None, engine="vllm", world=8, shards=8, fsdp=True)
    small, large = memory.breakdown(setup), memory.breakdown(replace(setup, context=context + more))
    assert small["update_peak"] <= large["update_peak"]
    assert small["rollout_peak"] == large["rollout_peak"]  # vLLM's share is its memory fraction, whatever the context


@settings(max_examples=60, deadline=None)
@given(context=st.integers(512, 1 << 20).map(lambda c: 2 * c), layers=st.integers(1, 48), checkpointing=st.booleans())
def test_sequence_parallel_halves_the_activations(context, layers, checkpointing):
    shape = Shape(152_064, 3584, layers, 28, 4, 128, 18_944, tied=False)
    one = Setup(shape=shape, context=context, checkpointing=checkpointing, micro_batch_tokens=1024)
    one = replace(one, world=8, shards=8, fsdp=True, sp_capable=True)
    two = replace(one, sp=2)
    a, b = memory.breakdown(one), memory.breakdown(two)
    assert b["lines"]["activations saved"] == pytest.approx(a["lines"]["activations saved"] / 2)
    assert a["update_peak"] / 2 <= b["update_peak"] <= a["update_peak"]


def test_cli_prints_the_plan(tiny_dir, capsys):
    assert plan.main(["-c", str(CONF / "tiny.yaml"), f"--model.init_args.model.init_args.path={tiny_dir}"]) == 0
    out = capsys.readouterr().out
    assert "update peak" in out and "rollout peak" in out and "verdict: FITS" in out
    assert plan.main(["-c", PLAN_7B, "--json", "--gpu-memory-gib", "80"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["fits"] and summary["smallest_sp"] == 2 and summary["tokens_per_gpu"] == 65_536
    sp1 = [
        "--trainer.strategy.init_args.sequence_parallel_size",
        "1",
        "--trainer.strategy.init_args.data_parallel_size=8",
    ]
    assert plan.main(["-c", PLAN_7B, *sp1, "--context=131072"]) == 0
    assert "DOES NOT FIT" in capsys.readouterr().out


def test_the_long_cot_recipe_fits_its_node(capsys):
    """conf/long_cot.yaml as written: a hub id (its config.json shipped under conf/models/ for a
    machine without the hub), 8 × 80 GB, SP 2, vLLM at TP 2 asleep at level 2 during the update."""
    assert plan.main(["-c", str(CONF / "long_cot.yaml"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["fits"] and summary["context"] == 131_072 and summary["smallest_sp"] == 2
    assert summary["host_gib"] == 0  # level 2 pins no weights in host memory


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("--model.init_args.model.class_path=k15.models.Nope", "k15.models.Nope"),
        ("--model.init_args.model.init_args.pathh=x", "pathh"),
        ("--model.init_args.model.init_args.path=/nowhere", "model.init_args.model.init_args.path"),
        ("--model.init_args.rollout.init_args.engine.init_args.vllm.max_model_lenn=9", "vllm.max_model_lenn"),
        ("--trainer.strategy=my_strategy", "trainer.strategy"),
        ("--model.init_args.optimizer.class_path=my.Optimizer", "my.Optimizer"),
        ("--modle.init_args.x=1", "modle"),
        ("--trainer.devices=${data.nowhere}", "data.nowhere"),
    ],
)
def test_a_bad_key_or_class_is_named(override, named, tiny_dir, capsys):
    """By fit's own parser (exit 2, its message) or by the plan (a key the parser cannot check)."""
    path = f"--model.init_args.model.init_args.path={tiny_dir}"
    try:
        code = plan.main(["-c", str(CONF / "tiny.yaml"), path, override])
    except SystemExit as stop:
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2 and named in err and "Traceback" not in err, err


@pytest.mark.timeout(300)  # two interpreters, one of them importing Lightning
def test_python_m_k15_dispatches_plan_and_the_rest():
    result = k15("plan", "-c", PLAN_7B, "--json")
    assert json.loads(result.stdout)["smallest_sp"] == 2
    assert "fit" in k15("--help", cwd=ROOT).stdout


LORA_SHAPES = [
    Shape(vocab=20, hidden=64, layers=2, heads=2, kv_heads=1, head_dim=32, intermediate=128),
    Shape(vocab=97, hidden=128, layers=3, heads=4, kv_heads=2, head_dim=32, intermediate=256, tied=False),
]


@pytest.mark.parametrize("shape", LORA_SHAPES)
@pytest.mark.parametrize("targets", [memory.linear_shapes(LORA_SHAPES[0]), ("q_proj", "v_proj")], ids=["all", "qv"])
def test_adapters_and_nf4_bytes_are_what_a_real_qlora_model_holds(shape, targets):
    """The plan's A (trained parameters) is peft's count, and the NF4 base + fp32 adapters it
    counts are the bytes the quantized model stores, scales and nested scales included."""
    from k15.lora import LoRA

    model = Qwen2ForCausalLM(qwen2(shape))
    LoRA(rank=8, target_modules=tuple(targets)).apply(model, torch.device("cpu"))
    adapters = memory.Adapters(rank=8, targets=tuple(targets))
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == shape.layers * memory.adapter_params(
        shape, adapters
    )
    stored = sum(p.numel() * p.element_size() for p in model.parameters())
    states = [m.quant_state for m in model.modules() if getattr(m, "quant_state", None) is not None]
    tables = [t for q in states for t in (q.absmax, q.code, q.offset, q.state2.absmax, q.state2.code)]
    scales = sum(t.numel() * t.element_size() for t in tables)
    planned = shape.layers * memory.layer_bytes(shape, adapters, 4) + memory.root_params(shape) * 4
    assert stored + scales == pytest.approx(planned, rel=0.01)


def test_the_7b_qlora_recipe_fits_one_gpu_at_32k_and_full_fine_tuning_does_not(capsys):
    """conf/long_cot_qlora_1gpu.yaml: a bf16 7B with rank-16 adapters on every linear layer; the
    same setup training every weight (bf16 AdamW state, no sharding) does not fit one GPU."""
    files = ["-c", str(CONF / "long_cot.yaml"), "-c", str(CONF / "qlora.yaml")]
    files += ["-c", str(CONF / "long_cot_qlora_1gpu.yaml")]
    assert plan.main([*files, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["fits"] and summary["context"] == 32_768 and summary["setup"]["world"] == 1
    assert summary["setup"]["adapters"]["rank"] == 16
    lines = summary["lines_gib"]
    assert lines["gradients"] < 0.2 and lines["optimizer"] == pytest.approx(2 * lines["gradients"], rel=0.01)
    setup, _ = plan.read_setup(parsed_config(files))
    assert not memory.fits(replace(setup, adapters=None))


def test_qlora_under_a_bf16_all_gather_of_an_fp32_model_is_refused(capsys):
    files = ["-c", str(CONF / "long_cot.yaml"), "-c", str(CONF / "qlora.yaml")]  # fp32 masters, bf16 param_dtype
    assert plan.main(files) == 2
    assert "trainer.strategy.init_args.param_dtype" in capsys.readouterr().err


def test_zero3_keeps_bf16_weights_fp32_master_gradients_and_adam_partitions(capsys):
    """ZeRO-3 in bf16 over R ranks: (2 + 4 + 4 + 8)·N/R bytes a rank; offloading the optimizer moves
    the master weights, gradients and Adam state (16·N/R) to the host, the weights stay."""
    files = ["-c", PLAN_7B, "-c", str(CONF / "strategy/deepspeed_zero3.yaml")]
    setup, _ = plan.read_setup(parsed_config(files))
    n, r = memory.parameter_count(setup.shape), 8
    assert setup.shards == r and setup.param_dtype == "bfloat16" and setup.zero3.bf16
    lines = memory.breakdown(setup)["lines"]
    kept = sum(lines[k] for k in ("parameters", "master weights", "gradients", "optimizer"))
    assert kept == pytest.approx(18 * n / r)
    offloaded = replace(setup, zero3=replace(setup.zero3, offload_optimizer=True))
    moved = memory.breakdown(offloaded)
    assert moved["lines"]["parameters"] == pytest.approx(2 * n / r) and moved["host"] == pytest.approx(16 * n / r)
    assert plan.main([*files, "--context=65536"]) == 0
    assert "master weights   N·4 B / 8 (fp32)" in capsys.readouterr().out
