"""``python -m k15 plan -c CONFIG [-c OVERLAY] [--key=value ...] [--context N] [--gpu-memory-gib 80] [--json]``

Per-GPU memory of an RL run from its config alone, before anything is allocated: no weights
loaded, no torch model built (the shape comes from ``config.json`` or a tiny model's arguments).
The config is read by the same parser as ``fit`` (merged overlays, overrides, interpolation,
defaults, a bad key named), nothing instantiated; the arithmetic is ``k15/memory.py``'s.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path

from k15.memory import (
    GIB,
    MIB,
    Adapters,
    PlanError,
    Setup,
    Shape,
    ZeRO3,
    adapter_params,
    breakdown,
    dtype_bytes,
    largest_context,
    parameter_count,
    smallest_sp,
    sp_degrees,
    vision_params,
)


def get(cfg, key: str, default=None):
    """The value at dotted ``key`` of the parsed config, as plain Python (dicts for namespaces)."""
    value = cfg.get(key, default)
    return value.as_dict() if hasattr(value, "as_dict") else value


def short(class_path) -> str:
    return str(class_path).rsplit(".", 1)[-1]


def component(cfg, key: str) -> tuple[str | None, dict]:
    """(class name, init_args with the class's defaults) of the ``class_path`` entry at ``key``;
    (None, {}) if absent; a registry name (``trainer.strategy: auto``) has no arguments."""
    node = get(cfg, key)
    if node is None or isinstance(node, str):
        return node, {}
    return short(node["class_path"]), node.get("init_args") or {}


PLANNED_STRATEGIES = (
    "FSDP2Strategy", "ZeRO3Strategy", "ModelParallelStrategy", "FSDPStrategy", "DDPStrategy", "SingleDeviceStrategy",
)  # fmt: skip
REGISTERED_STRATEGIES = {  # Lightning's registry names, as trainer.strategy: NAME
    "auto": "SingleDeviceStrategy", "single_device": "SingleDeviceStrategy", "ddp": "DDPStrategy",
    "ddp_spawn": "DDPStrategy", "fsdp": "FSDPStrategy", "model_parallel": "ModelParallelStrategy",
}  # fmt: skip


def defaults(cls) -> dict:
    """``cls``'s keyword defaults (for arguments a config passes through ``**kwargs`` or a plain dict)."""
    return {name: p.default for name, p in inspect.signature(cls).parameters.items() if p.default is not p.empty}


SHIPPED_CONFIGS = Path(__file__).resolve().parents[1] / "conf/models"  # conf/models/<hub id>/config.json


def config_file(path: str) -> Path:
    """Where a model's config.json is: in its folder; for a hub id, in the local hub cache, else
    the copy k15 ships under conf/models/<hub id>/ (a plan needs no network and no weights)."""
    from k15.models.source import is_hub_id

    if not is_hub_id(path):
        return Path(path) / "config.json"
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(path, "config.json")
    return Path(cached) if isinstance(cached, str) else SHIPPED_CONFIGS / path / "config.json"


def pretrained_shape(path: str, key: str) -> tuple[Shape, str]:
    """(shape, saved dtype) from a model's config.json (``config_file``; a VLM: its text model + vision tower)."""
    try:
        config = json.loads(config_file(path).read_text())
    except (OSError, ValueError) as error:
        raise PlanError(f"{key}.init_args.path: no readable config.json in {path!r} ({error})") from None
    text, vision = config.get("text_config", config), config.get("vision_config")
    try:
        heads, hidden = text["num_attention_heads"], text["hidden_size"]
        hv = vision and vision.get("hidden_size", 768)
        extra = vision and vision_params(
            hv, vision.get("intermediate_size", 4 * hv), vision.get("num_hidden_layers", 12),
            vision.get("patch_size", 32), vision.get("image_size", 224), hidden,
        )  # fmt: skip
        shape = Shape(
            text["vocab_size"], hidden, text["num_hidden_layers"], heads, text.get("num_key_value_heads") or heads,
            text.get("head_dim") or hidden // heads, text["intermediate_size"],
            tied=text.get("tie_word_embeddings", config.get("tie_word_embeddings", False)),
            max_positions=text.get("max_position_embeddings", 4096),
            qkv_bias=text.get("model_type") in ("qwen2", None) or bool(text.get("attention_bias")),
            extra_params=extra or 0,
        )  # fmt: skip
    except KeyError as error:
        raise PlanError(f"{key}.init_args.path: {path}/config.json has no {error}") from None
    return shape, str(text.get("dtype") or text.get("torch_dtype") or config.get("dtype") or "float32")


def model_shape(name: str, args: dict, key: str) -> tuple[Shape, str]:
    """(shape, model dtype) of a model source's init_args, nothing built (a tiny model: vocabulary =
    4 special tokens + an image token for TinyVLM + the alphabet's distinct characters)."""
    if name == "Pretrained":
        shape, saved = pretrained_shape(args.get("path") or "", key)
        return shape, saved if args.get("dtype") == "auto" else args.get("dtype") or "float32"
    from k15.models import TinyQwen2

    args = defaults(TinyQwen2) | args  # TinyVLM takes the text shape through **text_shape
    if not args.get("alphabet"):
        raise PlanError(f"{key}.init_args.alphabet: {name} needs one")
    vlm, hidden, heads = name == "TinyVLM", args["hidden_size"], args["num_heads"]
    extra = vlm and vision_params(
        args["vision_hidden_size"], 2 * args["vision_hidden_size"], args["vision_layers"], args["patch_size"],
        args["image_size"], hidden,
    )  # fmt: skip
    return Shape(
        4 + vlm + len(set(args["alphabet"])), hidden, args["num_layers"], heads, args["num_kv_heads"], hidden // heads,
        args["intermediate_size"], max_positions=args["max_position_embeddings"], extra_params=extra or 0,
    ), "float32"  # fmt: skip


def optimizer_states(cfg, key: str) -> int:
    """State tensors per parameter: Adam(W) 2 (3 with amsgrad), SGD 1 with momentum else 0, …"""
    node = get(cfg, key) or "AdamW"  # k15.optim.default_optimizer
    name, args = (node, {}) if isinstance(node, str) else (node.get("class_path"), node.get("init_args") or {})
    adam = 2 + bool(args.get("amsgrad"))
    states = {"Adam": adam, "AdamW": adam, "NAdam": 2, "RAdam": 2, "Adamax": 2, "Adadelta": 2, "Adagrad": 1}
    states |= {
        "SGD": int(bool(args.get("momentum"))),
        "RMSprop": 1 + bool(args.get("momentum")) + bool(args.get("centered")),
    }
    if short(name) not in states:
        raise PlanError(f"{key}.class_path: the plan does not know the state of {name!r} ({', '.join(states)})")
    return states[short(name)]


def count(cfg, key: str) -> int:
    value = get(cfg, key, 1)
    if isinstance(value, list) or isinstance(value, int | str) and str(value).isdigit() and int(value) > 0:
        return len(value) if isinstance(value, list) else int(value)
    raise PlanError(f"{key}: the plan needs a number, got {value!r} (e.g. --{key}=8)")


def read_setup(cfg, context: int | None = None, gpu_gib: float = 80.0) -> tuple[Setup, list[str]]:
    """The plan's inputs from a merged config, and notes on what it assumed."""
    m, notes = "model.init_args", []
    source, source_args = component(cfg, f"{m}.model")
    if source not in ("Pretrained", "TinyQwen2", "TinyVLM"):
        raise PlanError(f"{m}.model: the plan reads k15.models.Pretrained, TinyQwen2 or TinyVLM, not {source}")
    shape, model_dtype = model_shape(source, source_args, f"{m}.model")
    devices, world = count(cfg, "trainer.devices"), count(cfg, "trainer.devices") * count(cfg, "trainer.num_nodes")
    strategy, sargs = component(cfg, "trainer.strategy")
    strategy = REGISTERED_STRATEGIES.get(strategy, strategy)
    if strategy not in PLANNED_STRATEGIES:
        raise PlanError(f"trainer.strategy: the plan knows {', '.join(PLANNED_STRATEGIES)}, not {strategy!r}")
    sp, shards = (
        int(sargs.get("sequence_parallel_size") or 1),
        world if strategy in ("FSDP2Strategy", "FSDPStrategy", "ZeRO3Strategy") else 1,
    )
    auto = lambda arg, value: value if sargs.get(arg) in (None, "auto") else int(sargs[arg])  # noqa: E731
    if strategy == "FSDP2Strategy" and (dp := auto("data_parallel_size", world // sp)) * sp != world:
        raise PlanError(
            f"trainer.strategy.init_args: data_parallel_size {dp} × sequence_parallel_size {sp} ≠ {world} GPUs"
        )
    if strategy == "ModelParallelStrategy":  # k15 shards over the data-parallel mesh only
        tp = auto("tensor_parallel_size", devices)
        shards = auto("data_parallel_size", world // tp)
        notes += [f"ModelParallelStrategy: tensor_parallel_size {tp} splits nothing in k15"] if tp > 1 else []
    param_dtype, reduce_dtype = sargs.get("param_dtype"), sargs.get("reduce_dtype")
    zero3 = read_zero3(sargs) if strategy == "ZeRO3Strategy" else None
    if zero3 and zero3.bf16:
        param_dtype = "bfloat16"
    precision = str(get(cfg, "trainer.precision", "32"))
    if precision in ("bf16-true", "16-true"):
        model_dtype = "bfloat16" if precision.startswith("bf16") else "float16"
    elif precision.endswith("-mixed") and param_dtype is None:
        param_dtype = "bfloat16" if precision.startswith("bf16") else "float16"
    rollout, rollout_args = component(cfg, f"{m}.rollout")
    engine, eargs = component(cfg, f"{m}.rollout.init_args.engine")
    if engine == "AutoEngine":
        notes.append("AutoEngine planned as vLLM (its choice where vLLM is installed)")
        from k15.rollout.vllm import VLLMEngine

        given = eargs.get("vllm") or {}
        if unknown := sorted(set(given) - set(defaults(VLLMEngine))):
            raise PlanError(
                f"{m}.rollout.init_args.engine.init_args.vllm.{unknown[0]}: VLLMEngine takes no such argument"
            )
        eargs = defaults(VLLMEngine) | given
    vllm = engine in ("VLLMEngine", "AutoEngine")
    if rollout:
        per_step = get(cfg, "data.init_args.prompts_per_iteration", 16) * rollout_args["samples_per_prompt"]
    else:
        per_step = get(cfg, "data.init_args.batch_size", 1)
    vdtype = eargs.get("dtype") or "bfloat16"
    adapters = read_adapters(cfg, f"{m}.lora", shape)
    if adapters and zero3:
        raise PlanError(f"{m}.lora: LoRA under ZeRO3Strategy is not supported (use FSDP2Strategy)")
    if adapters and adapters.nf4 and param_dtype not in (None, model_dtype):
        raise PlanError(
            f"trainer.strategy.init_args.param_dtype: QLoRA keeps its 4-bit codes in the model's dtype "
            f"({model_dtype}); FSDP2 would cast them (set it to null; k15 fit refuses it too)"
        )
    setup = Setup(
        shape=shape, context=context or (vllm and eargs.get("max_model_len")) or shape.max_positions, gpu_gib=gpu_gib,
        gpu=str(get(cfg, "trainer.accelerator", "auto")) != "cpu", model_dtype=model_dtype, param_dtype=param_dtype,
        reduce_dtype=reduce_dtype, optimizer_states=optimizer_states(cfg, f"{m}.optimizer"),
        checkpointing=bool(get(cfg, f"{m}.activation_checkpointing", False)),
        chunk_tokens=int(get(cfg, f"{m}.logprob_chunk_tokens", 1024)),
        micro_batch_tokens=get(cfg, f"{m}.max_tokens_per_micro_batch") or get(cfg, f"{m}.micro_batch_tokens"),
        rows=int(get(cfg, f"{m}.trajectories_per_step") or per_step), world=world, sp=sp, shards=shards,
        fsdp=strategy in ("FSDP2Strategy", "ModelParallelStrategy", "FSDPStrategy", "ZeRO3Strategy"),
        sp_capable=strategy == "FSDP2Strategy", cpu_offload=bool(sargs.get("cpu_offload")),
        reference_copy=get(cfg, f"{m}.reference.init_args.mode") == "initial",
        engine="vllm" if vllm else "hf" if engine else None, vllm_dtype=model_dtype if vdtype == "auto" else vdtype,
        tp=int(eargs.get("tensor_parallel_size") or 1), utilization=float(eargs.get("gpu_memory_utilization") or 0.5),
        kv_cache_gib=eargs.get("kv_cache_gib"), sleeps=bool(eargs.get("sleep_between_rollouts", True)),
        sleep_level=int(eargs.get("sleep_level") or 2),
        hf_sequences=int(eargs.get("max_sequences") or 512), adapters=adapters, zero3=zero3,
    )  # fmt: skip
    if setup.context > shape.max_positions:
        notes.append(f"context {setup.context:,} is past the model's {shape.max_positions:,} positions (RoPE scaling)")
    if vllm and setup.gpu and setup.sleeps and setup.sleep_level == 1:
        notes.append("while vLLM sleeps at level 1 its weights wait in host memory (level 2 drops them)")
    return setup, notes


def read_zero3(args: dict) -> ZeRO3:
    """``k15.deepspeed.ZeRO3Strategy``'s arguments as the plan's ``ZeRO3`` (its ``config`` overrides are not read)."""
    from k15.deepspeed import ZeRO3Strategy

    args = defaults(ZeRO3Strategy) | args
    return ZeRO3(
        bool(args["bf16"]), bool(args["fp32_gradient_accumulation"]),
        bool(args["offload_parameters"]), bool(args["offload_optimizer"]),
    )  # fmt: skip


def read_adapters(cfg, key: str, shape: Shape) -> Adapters | None:
    """``model.init_args.lora`` (``k15.lora.LoRA``) as the plan's ``Adapters``; None: full fine-tuning."""
    name, args = component(cfg, key)
    if name is None:
        return None
    if name != "LoRA":
        raise PlanError(f"{key}: the plan reads k15.lora.LoRA, not {name}")
    from k15.lora import LoRA
    from k15.memory import linear_shapes

    args = defaults(LoRA) | args
    targets = tuple(args["target_modules"])
    if unknown := sorted(set(targets) - set(linear_shapes(shape))):
        raise PlanError(
            f"{key}.init_args.target_modules: no {unknown[0]!r} in the model "
            f"(Qwen2's: {', '.join(linear_shapes(shape))})"
        )
    return Adapters(int(args["rank"]), targets, bool(args["quantize_base"]), bool(args["double_quant"]))


# ---- report ------------------------------------------------------------------------------------------------------


def summary(p: Setup, notes: list[str]) -> dict:
    """The plan as a JSON-able dict, sizes in GiB."""
    b, g = breakdown(p), lambda x: round(x / GIB, 4)
    return {
        "parameters": parameter_count(p.shape), "context": p.context, "tokens_per_gpu": b["tokens_per_gpu"], "sp": p.sp,
        "gpu_memory_gib": p.gpu_gib, "lines_gib": {k: g(v) for k, v in b["lines"].items()},
        "transients_gib": {k: g(v) for k, v in b["transients"].items()}, "peak_transient": b["peak_transient"],
        "engine_gib": b["engine"] and {k: g(v) for k, v in b["engine"].items()},
        "kv_cache_tokens": b["kv_tokens"] and int(b["kv_tokens"]),
        "trainer_update_peak_gib": g(b["trainer_update_peak"]), "update_peak_gib": g(b["update_peak"]),
        "rollout_peak_gib": g(b["rollout_peak"]), "host_gib": g(b["host"]), "fits": b["fits"], "over": b["over"],
        "largest_context": largest_context(p), "smallest_sp": smallest_sp(p), "notes": notes, "setup": asdict(p),
        "update_peak_gib_checkpointing_" + ("off" if p.checkpointing else "on"):
            g(breakdown(replace(p, checkpointing=not p.checkpointing))["update_peak"]),
    }  # fmt: skip


def report(p: Setup, notes: list[str]) -> str:
    """The breakdown as a table."""
    s, plan, b = p.shape, summary(p, notes), breakdown(p)
    unit, name = (GIB, "GiB") if max(b["update_peak"], b["rollout_peak"]) >= GIB else (MIB, "MiB")
    m, where = dtype_bytes(p.model_dtype), "per GPU" if p.gpu else "per process (accelerator: cpu)"
    rows = [
        f"k15 plan: {plan['parameters']:,} parameters: {s.layers} layers, hidden {s.hidden}, heads "
        f"{s.heads}/{s.kv_heads} × {s.head_dim}, intermediate {s.intermediate}, vocab {s.vocab:,}{', tied' * s.tied}",
        *(
            [
                f"  {'QLoRA' if p.adapters.nf4 else 'LoRA'} rank {p.adapters.rank} on {', '.join(p.adapters.targets)}: "
                f"A = {p.shape.layers * adapter_params(p.shape, p.adapters):,} trained parameters"
            ]
            if p.adapters
            else []
        ),
        f"  {p.world} × {p.gpu_gib:g} GiB, " + (f"FSDP over {p.shards}, SP {p.sp}" if p.fsdp else "unsharded")
        + f"; weights {p.model_dtype}, compute {p.param_dtype or p.model_dtype}" + ", CPU offload" * p.cpu_offload,
        f"  context {p.context:,} → {plan['tokens_per_gpu']:,} tokens {where} a micro-batch; activation checkpointing "
        f"{'on' if p.checkpointing else 'off'}; log-prob chunks of {p.chunk_tokens:,}",
        f"update, {where}:{name:>{52 - len(where)}}",
    ]  # fmt: skip

    def line(label: str, value: float, extra: str = "", show: bool = True) -> None:
        rows.extend([f"  {label:<52}{value / unit:>9.2f}{extra}"] * show)

    lines, host = b["lines"], " (host)" * p.cpu_offload
    line("runtime (CUDA context, NCCL, workspaces)", lines["runtime"], show=p.gpu)
    r, k = p.shards, p.optimizer_states
    if p.adapters:
        base = "NF4" if p.adapters.nf4 else p.model_dtype
        labels = (f"{base} base + fp32 adapters / {r}", f"A·4 B / {r}", f"{k}·A·4 B / {r}")
    elif p.zero3:
        grad = 4 if p.zero3.fp32_gradients or not p.zero3.bf16 else 2
        labels = (f"N·{2 if p.zero3.bf16 else m} B / {r}", f"N·{grad} B / {r}", f"{k}·N·4 B / {r}")
    else:
        labels = (f"N·{m} B / {r}", f"N·{m} B / {r}", f"{k}·N·{m} B / {r}")
    line(f"parameters       {labels[0]}{host}", lines["parameters"])
    line(f"master weights   N·4 B / {r} (fp32)", lines["master weights"], show=bool(p.zero3 and p.zero3.bf16))
    line(f"gradients        {labels[1]}{host}", lines["gradients"])
    line(f"optimizer state  {labels[2]}{host}", lines["optimizer"])
    line("reference copy (reference mode: initial)", lines["reference copy"], show=p.reference_copy)
    line("FSDP unsharded parameters and gradients in flight", lines["fsdp buffers"], show=p.fsdp)
    line(
        f"activations saved ({lines['activations saved'] / b['tokens_per_gpu']:,.0f} B a token)",
        lines["activations saved"],
    )
    others = ", ".join(
        f"{k.replace('_', ' ')} {v / unit:.2f}" for k, v in b["transients"].items() if k != b["peak_transient"]
    )
    line(f"+ {b['peak_transient'].replace('_', ' ')} transient", lines["activation transient"], f"  (others: {others})")
    asleep = p.gpu and p.sleeps
    line(
        f"vLLM {'asleep' if asleep else 'awake (no sleep mode here)'}", lines["vllm (update)"], show=p.engine == "vllm"
    )
    verdict = lambda peak: f" of {p.gpu_gib:g} GiB: " + ("fits" if peak <= p.gpu_gib * GIB else "DOES NOT FIT")  # noqa: E731
    line("update peak", b["update_peak"], verdict(b["update_peak"]))
    other = breakdown(replace(p, checkpointing=not p.checkpointing))
    per_token = other["lines"]["activations saved"] / other["tokens_per_gpu"]
    line(
        f"(checkpointing {'off' if p.checkpointing else 'on'}: {per_token:,.0f} B/token, peak",
        other["update_peak"],
        ")",
    )
    rows.append(f"rollout, {where}:")
    line("trainer resident (parameters, optimizer, runtime)", b["trainer_resident"])
    if b["engine"]:
        line(f"vLLM weights ({p.vllm_dtype}, TP {p.tp})", b["engine"]["weights"])
        line("vLLM activations (profiled)", b["engine"]["activations"])
        line(f"vLLM KV cache ({int(b['kv_tokens']):,} tokens)", b["engine"]["kv_cache"])
    line(
        "HF generate (KV cache, logits, all-gathers)", b["rollout_peak"] - b["trainer_resident"], show=p.engine == "hf"
    )
    line("rollout peak", b["rollout_peak"], verdict(b["rollout_peak"]))
    if p.engine == "vllm":
        then = ", and vLLM's share back while it sleeps during the update" if asleep else "; it never sleeps here"
        rows.append(f"  vLLM is colocated: the trainer gets what vLLM leaves while it rolls out{then}")
    rows += [f"  host memory a process: {b['host'] / GIB:.2f} GiB"] * bool(b["host"])
    sp = plan["smallest_sp"]
    rows.append(
        f"verdict: {'FITS' if b['fits'] else 'DOES NOT FIT (' + ', '.join(b['over']) + ')'} at {p.context:,} tokens "
        f"with SP {p.sp}; largest context at SP {p.sp}: {plan['largest_context']:,} tokens; smallest SP for "
        f"{p.context:,} tokens: " + (str(sp) if sp else f"none of {sp_degrees(p)}")
        + ("" if p.sp_capable else " (SP needs k15.strategy.FSDP2Strategy)")
    )  # fmt: skip
    return "\n".join(rows + [f"note: {n}" for n in notes])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="k15 plan", description=__doc__.split("\n\n")[1], allow_abbrev=False)
    parser.add_argument("--context", type=int, help="tokens to plan for (default: max_model_len or max positions)")
    parser.add_argument("--gpu-memory-gib", type=float, default=80.0)
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args, config_args = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    from k15.cli import parsed_config  # the config errors of fit, by the same parser (exit 2)

    cfg = parsed_config(config_args)
    try:
        setup, notes = read_setup(cfg, args.context, args.gpu_memory_gib)
    except PlanError as error:
        print(f"k15 plan: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(summary(setup, notes)) if args.json else report(setup, notes))
    return 0
