"""Per-GPU memory of an RL run, as arithmetic on the model's shape and the run's settings (no
weights, no torch model): the formulas behind ``python -m k15 plan`` (``k15/plan.py``).

Sizes in bytes per GPU; N = parameters, S = FSDP shards, t = tokens per GPU in a micro-batch,
b = compute-dtype bytes; Qwen2 shapes: H hidden, L layers, n_h / n_kv heads of d_h,
I intermediate, V vocabulary.

With LoRA only the adapters train (r·(in + out) parameters per target layer, fp32: peft upcasts
them), so gradients and optimizer state are the adapters'; QLoRA stores the target layers' frozen
weights in NF4 (``NF4_BYTES`` a weight) and the rest of the model in its dtype.

    update  = runtime + params + grads + optimizer + reference + FSDP buffers + [vLLM unless asleep]
              + activations saved + the largest transient (forward end, head forward or backward, a layer's backward)
    rollout = runtime + params + optimizer + reference + engine (vLLM: weights + activations + KV cache)

Assumed: packed sequences with per-document attention (sdpa per slice or flash varlen: no T²
scores, GQA without repeated K/V); steady state (the optimizer state is alive while the next
micro-batch runs); on GPUs a colocated vLLM engine sleeps during the update (levels 1 and 2 both
free its GPU memory). Not modelled: allocator fragmentation, a VLM's vision-tower activations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

GIB, MIB = 2**30, 2**20
RUNTIME_GIB = 1.0  # a GPU process's CUDA context, cuBLAS workspaces, NCCL buffers
SCALAR_BYTES = 80  # per token: ids, masks, versions, targets, log π, H, logsumexp, the loss's [N, T] terms
BYTES = {"float32": 4, "float": 4, "fp32": 4, "float64": 8, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2}


NF4_BYTES = {  # a 4-bit code per weight + its block's scale (64-weight blocks)
    True: 0.5 + 1 / 64 + 4 / (64 * 256),  # double quantization: 8-bit scales, an fp32 scale per 256 of them
    False: 0.5 + 4 / 64,  # fp32 scales
}
NF4_TABLE_BYTES = {True: (16 + 1 + 256) * 4, False: 16 * 4}  # per layer: the NF4 code (+ the offset and 8-bit code)
ADAPTER_BYTES = 4  # peft keeps LoRA adapters in fp32 whatever the base's dtype


class PlanError(ValueError):
    """A setting the plan cannot use; the message names its key."""


def dtype_bytes(name: str) -> int:
    key = str(name).removeprefix("torch.").lower()
    if key not in BYTES:
        raise PlanError(f"unknown dtype {name!r} (one of {', '.join(BYTES)})")
    return BYTES[key]


@dataclass(frozen=True)
class Shape:
    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    tied: bool = True
    max_positions: int = 4096
    qkv_bias: bool = True  # Qwen2's q/k/v projections have biases (Llama's do not)
    extra_params: int = 0  # a VLM's vision tower and projector


def layer_params(s: Shape) -> int:
    """One decoder layer: q, k, v (H·(n_h + 2n_kv)·d_h, biases (n_h + 2n_kv)·d_h), o (n_h·d_h·H),
    gate, up, down (3·H·I), two RMSNorm weights (2H)."""
    qkv = (s.heads + 2 * s.kv_heads) * s.head_dim
    return (
        (s.hidden + s.qkv_bias) * qkv + s.heads * s.head_dim * s.hidden + 3 * s.hidden * s.intermediate + 2 * s.hidden
    )


@dataclass(frozen=True)
class ZeRO3:
    """DeepSpeed ZeRO-3 (``k15.deepspeed.ZeRO3Strategy``): bf16 weights with fp32 master weights,
    gradients accumulated in fp32 or bf16, parts of each offloadable to the host."""

    bf16: bool = True
    fp32_gradients: bool = True
    offload_parameters: bool = False
    offload_optimizer: bool = False


@dataclass(frozen=True)
class Adapters:
    """LoRA (``k15.lora.LoRA``): rank r on the named linear layers, the base in NF4 for QLoRA."""

    rank: int
    targets: tuple[str, ...]
    nf4: bool = True
    double_quant: bool = True


def linear_shapes(s: Shape) -> dict[str, tuple[int, int]]:
    """(in, out) of each linear layer of a Qwen2 decoder layer, by name."""
    q, kv = s.heads * s.head_dim, s.kv_heads * s.head_dim
    return {
        "q_proj": (s.hidden, q), "k_proj": (s.hidden, kv), "v_proj": (s.hidden, kv), "o_proj": (q, s.hidden),
        "gate_proj": (s.hidden, s.intermediate), "up_proj": (s.hidden, s.intermediate),
        "down_proj": (s.intermediate, s.hidden),
    }  # fmt: skip


def adapter_params(s: Shape, a: Adapters) -> int:
    """Trained parameters per decoder layer: Σ over the targets of r·(in + out) (A: r × in, B: out × r)."""
    return sum(a.rank * (i + o) for name, (i, o) in linear_shapes(s).items() if name in a.targets)


def layer_bytes(s: Shape, a: Adapters | None, b: int) -> float:
    """One decoder layer's weights as stored: targets in NF4 (QLoRA), the rest in ``b`` bytes, adapters fp32."""
    if a is None:
        return layer_params(s) * b
    shapes = [i * o for name, (i, o) in linear_shapes(s).items() if name in a.targets]
    target = sum(shapes)
    nf4 = target * NF4_BYTES[a.double_quant] + len(shapes) * NF4_TABLE_BYTES[a.double_quant]
    base = (layer_params(s) - target) * b + (nf4 if a.nf4 else target * b)
    return base + adapter_params(s, a) * ADAPTER_BYTES


def root_params(s: Shape) -> int:
    """FSDP2's root unit: embeddings V·H, the head (another V·H unless tied), the final norm H, a vision tower."""
    return s.vocab * s.hidden * (1 if s.tied else 2) + s.hidden + s.extra_params


def parameter_count(s: Shape) -> int:
    """N = L · layer_params + root_params."""
    return s.layers * layer_params(s) + root_params(s)


def vision_params(hidden: int, intermediate: int, layers: int, patch: int, image: int, text_hidden: int) -> int:
    """CLIP ViT + LLaVA projector: patch conv 3·p²·Hv, class and ((S/p)² + 1) position embeddings,
    pre/post norms 4Hv, per layer 4(Hv² + Hv) + 4Hv + 2·Hv·Iv + Iv + Hv; projector Hv·H + H² + 2H."""
    per_layer = 4 * hidden**2 + 9 * hidden + 2 * hidden * intermediate + intermediate
    embeddings = 3 * patch**2 * hidden + ((image // patch) ** 2 + 2) * hidden + 4 * hidden
    return embeddings + layers * per_layer + hidden * text_hidden + text_hidden**2 + 2 * text_hidden


def kv_bytes_per_token(s: Shape, nbytes: int, tp: int = 1) -> int:
    """KV cache per token on one GPU: 2 (K and V) · L · n_kv/TP (at least one head) · d_h · bytes."""
    return 2 * s.layers * max(1, s.kv_heads // tp) * s.head_dim * nbytes


def layer_activation_bytes(s: Shape, b: int) -> int:
    """Saved for backward by one Qwen2 decoder layer, per token (as the autograd graph holds them):
    each RMSNorm its input upcast to fp32 (4H), its normalised and scaled outputs (2bH) and an fp32
    rsqrt (4); attention q and k after RoPE, v, sdpa's output, the contiguous copy o_proj reads
    (b·(2n_h·d_h + 2n_kv·d_h + H)) and sdpa's fp32 logsumexp (4n_h); the MLP gate, silu(gate), up
    and their product (4bI)."""
    attention = b * (2 * s.heads * s.head_dim + 2 * s.kv_heads * s.head_dim + s.hidden) + 4 * s.heads
    return 2 * (4 * s.hidden + 2 * b * s.hidden + 4) + attention + 4 * b * s.intermediate


def activation_bytes_per_token(s: Shape, b: int, checkpointing: bool) -> dict[str, int]:
    """Per token, ``saved`` through the backward and the transients on top of it:

    saved       = L · layer (checkpointing: L·bH, each layer's input) + RoPE cos/sin 2·d_h·b
                  + final norm 4H + bH + 4 + the head's input bH + SCALAR_BYTES
    layer       = one layer's backward: ∂ of down's input, silu(gate), up and the residual stream,
                  (3I + 2H)·b, plus (checkpointing) the recomputed layer's saved activations
    forward_end = L·bH if b < 4 without checkpointing (the hidden-states tuple the forward returns)"""
    end = 4 * s.hidden + 2 * b * s.hidden + 4 + 2 * s.head_dim * b + SCALAR_BYTES
    layer = layer_activation_bytes(s, b)
    return {
        "saved": end + s.layers * (b * s.hidden if checkpointing else layer),
        "layer": (3 * s.intermediate + 2 * s.hidden) * b + (layer if checkpointing else 0),
        "forward_end": s.layers * b * s.hidden if b < 4 and not checkpointing else 0,
    }


def head_bytes(s: Shape, tokens: int, chunk: int, b: int, trained: bool = True) -> dict[str, int]:
    """``k15.logprobs.ChunkedHeadScores``, C = min(chunk, t) positions at a time:
    head_forward  = 3·C·V·4 (fp32 logits, their exp, the vecdot product) + t·H·b (the final hidden states)
    head_backward = 4·V·H (fp32 head-gradient accumulator) + t·H·b (∂h)
                    + max(C·V·(4 + 2·[b<4]) (logits, ∂z cast to b), V·H·b·[b<4] (the gradient cast back))
    A frozen head (LoRA) has no gradient: neither the accumulator nor its cast."""
    c, vh, low = min(chunk, tokens), s.vocab * s.hidden * trained, b < 4
    return {
        "head_forward": 12 * c * s.vocab + tokens * s.hidden * b,
        "head_backward": 4 * vh + tokens * s.hidden * b + max(c * s.vocab * (4 + 2 * low), vh * b * low),
    }


@dataclass(frozen=True)
class Setup:
    """What the plan reads from a config (``read_setup``)."""

    shape: Shape
    context: int
    gpu_gib: float = 80.0
    gpu: bool = True  # False: the "device" is a CPU process (no CUDA context; vLLM never sleeps)
    model_dtype: str = "float32"
    param_dtype: str | None = None  # FSDP2 mixed precision: all-gather and compute dtype (None: the model's)
    reduce_dtype: str | None = None
    optimizer_states: int = 2
    checkpointing: bool = False
    chunk_tokens: int = 1024
    micro_batch_tokens: int | None = None  # max_tokens_per_micro_batch
    rows: int = 1  # trajectories of a step on one rank (one micro-batch when there is no token budget)
    world: int = 1
    sp: int = 1
    shards: int = 1
    fsdp: bool = False
    sp_capable: bool = False  # k15.strategy.FSDP2Strategy
    cpu_offload: bool = False
    reference_copy: bool = False
    engine: str | None = None  # "vllm", "hf" or None
    vllm_dtype: str = "bfloat16"
    tp: int = 1
    utilization: float = 0.5
    kv_cache_gib: float | None = None
    sleeps: bool = True
    sleep_level: int = 2  # 1: the sleeping engine's weights wait in host memory; 2: dropped
    hf_sequences: int = 512
    adapters: Adapters | None = None  # LoRA / QLoRA; None: every weight trains
    zero3: ZeRO3 | None = None  # k15.deepspeed.ZeRO3Strategy (shards = world)


def tokens_per_gpu(p: Setup) -> int:
    """t = ⌈max(budget, context) / SP⌉: a micro-batch packs up to max_tokens_per_micro_batch real
    tokens (a longer trajectory goes alone) from its SP group's rollouts, and the group's ranks
    split the packed row; without a budget, a step's rows in one row: rows · context per GPU."""
    if p.micro_batch_tokens:
        return math.ceil(max(p.micro_batch_tokens, p.context) / p.sp)
    return p.rows * p.context  # the SP group's union of rows (SP × rows), split over its SP ranks


def vllm_share(p: Setup) -> dict[str, float]:
    """vLLM's own memory: weights N·bytes/TP; profiled activations ≈ B·(2I/TP + 4H)·bytes + 256·V·4
    (B = 16,384 batched tokens on GPUs, max(context, 2048) on CPUs); KV cache = kv_cache_gib, else
    gpu_memory_utilization · GPU − weights − activations (vLLM's whole share is that fraction)."""
    s, nb = p.shape, dtype_bytes(p.vllm_dtype)
    weights = parameter_count(s) * nb / p.tp
    acts = (16_384 if p.gpu else max(p.context, 2048)) * (2 * s.intermediate / p.tp + 4 * s.hidden) * nb
    acts += 256 * s.vocab * 4
    kv = p.kv_cache_gib * GIB if p.kv_cache_gib is not None else p.utilization * p.gpu_gib * GIB - weights - acts
    return {"weights": weights, "activations": acts, "kv_cache": max(kv, 0.0), "total": weights + acts + max(kv, 0.0)}


def breakdown(p: Setup) -> dict:
    """Each line, the update and rollout peaks, and whether both fit (with room for one
    context-length sequence in vLLM's KV cache).

    params = grads = N·m/S, optimizer = k·N·m/S (m: the model dtype's bytes, k: 2 for Adam(W)); on
    the host with cpu_offload. FSDP buffers = (root + 2 layers)·p_b (FSDP2 keeps the root unsharded
    through forward and backward and prefetches one layer) + V·H·p_b (the head's unsharded gradient,
    held until the root reduces) + one layer's gradient in p_b and the reduce dtype. The optimizer
    step's foreach temporary, N·m/S, counts only if larger than the activations.

    LoRA: params = (the frozen base as stored + the adapters A·4)/S, grads = A·4/S, optimizer =
    k·A·4/S (A = L · adapter_params); the FSDP buffers hold layers as stored and no head gradient;
    a target layer's weight is dequantized to p_b for its matmuls (one at a time: a layer transient)."""
    s, n, t, a = p.shape, parameter_count(p.shape), tokens_per_gpu(p), p.adapters
    m, pb = dtype_bytes(p.model_dtype), dtype_bytes(p.param_dtype or p.model_dtype)
    rb = dtype_bytes(p.reduce_dtype or p.param_dtype or p.model_dtype)
    on_gpu = not p.cpu_offload
    if a is None:
        weights = trained = n * m / p.shards
    else:
        trained = s.layers * adapter_params(s, a) * ADAPTER_BYTES / p.shards
        weights = (s.layers * layer_bytes(s, a, m) + root_params(s) * m) / p.shards
    state = trained * on_gpu
    lines = {"runtime": RUNTIME_GIB * GIB * p.gpu, "parameters": weights * on_gpu, "gradients": state}
    lines |= {"optimizer": p.optimizer_states * state, "reference copy": weights * on_gpu * p.reference_copy}
    if p.zero3:
        lines, host = zero3_lines(p, n, lines)
    else:
        host = (weights + (1 + p.optimizer_states) * trained) * p.cpu_offload
    lines["master weights"] = lines.get("master weights", 0.0)
    layer, head_gradient = layer_bytes(s, a, pb), s.vocab * s.hidden * pb * (a is None)
    layer_gradient = layer_params(s) if a is None else adapter_params(s, a)
    lines["fsdp buffers"] = p.fsdp * (
        root_params(s) * pb + 2 * layer + head_gradient + layer_gradient * (pb + rb * (rb != pb))
    )
    per_token = activation_bytes_per_token(s, pb, p.checkpointing)
    transients = {k: v * t for k, v in per_token.items() if k != "saved"} | head_bytes(
        s, t, p.chunk_tokens, pb, trained=a is None
    )
    if a is not None and a.nf4:
        transients["layer"] += max(i * o for name, (i, o) in linear_shapes(s).items() if name in a.targets) * pb
    peak_transient = max(transients, key=transients.get)
    lines |= {"activations saved": per_token["saved"] * t, "activation transient": transients[peak_transient]}
    engine = vllm_share(p) if p.engine == "vllm" else None
    lines["vllm (update)"] = engine["total"] if engine and not (p.gpu and p.sleeps) else 0.0
    static = sum(
        lines[k] for k in ("runtime", "parameters", "master weights", "gradients", "optimizer", "reference copy")
    )
    work = lines["fsdp buffers"] + lines["activations saved"] + lines["activation transient"]
    trainer_update = static + max(work, state)
    resident = static - lines["gradients"]  # update_policy ends with zero_grad(set_to_none=True)
    if p.engine == "hf":  # generate on the policy: KV of the sequences at once, their logits, FSDP all-gathers
        seqs = min(p.hf_sequences, p.rows)
        share = seqs * p.context * kv_bytes_per_token(s, pb) + 3 * seqs * s.vocab * 4
        share += p.fsdp * (root_params(s) * pb + 2 * layer)
    else:
        share = engine["total"] if engine else 0.0
    kv_tokens = engine["kv_cache"] / kv_bytes_per_token(s, dtype_bytes(p.vllm_dtype), p.tp) if engine else None
    update, rollout, limit = trainer_update + lines["vllm (update)"], resident + share, p.gpu_gib * GIB
    limits = [name for name, over in (("update", update > limit), ("rollout", rollout > limit)) if over]
    limits += ["vLLM KV cache"] if kv_tokens is not None and kv_tokens < p.context else []
    host += engine["weights"] if engine and p.gpu and p.sleeps and p.sleep_level == 1 else 0.0
    return {
        "lines": lines, "tokens_per_gpu": t, "transients": transients, "peak_transient": peak_transient,
        "trainer_update_peak": trainer_update, "update_peak": update, "rollout_peak": rollout,
        "trainer_resident": resident, "engine": engine, "kv_tokens": kv_tokens, "host": host,
        "fits": not limits, "over": limits,
    }  # fmt: skip


def zero3_lines(p: Setup, n: int, lines: dict) -> tuple[dict, float]:
    """ZeRO-3's partitions a rank keeps, and what it offloads to the host: weights N·p_b/R (bf16, or
    the model's dtype), fp32 master weights 4N/R (bf16 only), gradients N·(4 or p_b)/R, optimizer
    k·4N/R; ``offload_parameters`` moves the weights, ``offload_optimizer`` the rest."""
    z, r, m = p.zero3, p.shards, dtype_bytes(p.model_dtype)
    weight_bytes = 2 if z.bf16 else m
    parts = {
        "parameters": n * weight_bytes / r,
        "master weights": n * 4 / r * z.bf16,
        "gradients": n * (4 if z.fp32_gradients or not z.bf16 else 2) / r,
        "optimizer": p.optimizer_states * n * 4 / r,
    }
    offloaded = {"parameters": z.offload_parameters} | dict.fromkeys(
        ("master weights", "gradients", "optimizer"), z.offload_optimizer
    )
    host = sum(v for k, v in parts.items() if offloaded[k])
    return lines | {k: 0.0 if offloaded[k] else v for k, v in parts.items()}, host


STATIC = ("runtime", "parameters", "master weights", "gradients", "optimizer", "reference copy")  # between steps


def fits(p: Setup) -> bool:
    return breakdown(p)["fits"]


def largest_context(p: Setup, cap: int = 2**24) -> int:
    """The largest context (vLLM's max_model_len too) that fits at this SP degree, by bisection
    (memory only grows with the context); 0 if one token does not fit, ``cap`` if that fits."""
    lo, hi = 0, cap + 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(replace(p, context=mid)) else (lo, mid)
    return lo


def sp_degrees(p: Setup) -> list[int]:
    """SP degrees to try: divisors of the KV heads (Ulysses splits heads over the ranks) that divide the world."""
    kv = p.shape.kv_heads
    return [d for d in range(1, kv + 1) if kv % d == 0 and p.world % d == 0] if p.sp_capable else [1]


def smallest_sp(p: Setup) -> int | None:
    """The smallest SP degree at which the planned context fits (None: none does)."""
    return next((d for d in sp_degrees(p) if fits(replace(p, sp=d))), None)
