"""LanguageModule: what SFT and RL modules share — a causal LM, its tokenizer, held-out accuracy."""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict
from functools import cached_property
from pathlib import Path

from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from transformers import PreTrainedModel

from k15.data.prompts import PromptBatch, all_ranks
from k15.deepspeed import ZeRO3Strategy
from k15.errors import K15Error, require_at_least_one
from k15.evaluation import Evaluation, PromptSamples, evaluate, flat_metrics
from k15.finite import FiniteGuard, require_finite_weights
from k15.generation import Request, Sampling, hf_sample
from k15.lora import LoRA
from k15.metrics import log_iteration
from k15.models import ModelSource
from k15.optim import check_learning_rates, configured_optimizers, default_optimizer
from k15.reward import RewardModule
from k15.rng import restore_rng_states, rng_states
from k15.rollout.engine import Engine
from k15.sequence_parallel import enable_sequence_parallel
from k15.signals import CheckpointOnSignal
from k15.strategy import FSDP2Strategy

# An evaluation's metrics are logged once, at the end of validation, made from every rank's gathered
# samples: they need no sync_dist. Lightning recommends it for each key wherever a process group
# exists, and vLLM makes one even in a single process.
warnings.filterwarnings("ignore", message=r"It is recommended to use `self.log\('heldout/")


def checkpoint_decoder_layers(model: PreTrainedModel) -> None:
    """Activation checkpointing per decoder layer: a layer keeps only its input for backward and
    recomputes the rest there (non-reentrant, so it composes with FSDP2's per-layer sharding).
    Memory for activations then grows with layers × tokens × hidden instead of all intermediates;
    one extra forward of the layers is the price. Applies in train mode only (not to generation)."""
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def shard_decoder(model: PreTrainedModel, mesh, **policies) -> None:
    """FSDP2: shard each decoder layer, then the rest (embeddings, norm, tied head) at the root.
    ``policies``: ``fully_shard``'s ``mp_policy`` / ``offload_policy`` (``k15.strategy.FSDP2Strategy``)."""
    from torch.distributed.fsdp import fully_shard

    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh, **policies)
    fully_shard(model, mesh=mesh, **policies)


class LanguageModule(LightningModule):
    """A causal LM, or a vision-language model that reads images too, built from a ``ModelSource``
    in ``configure_model`` (so sharding strategies can build it in place), validated by greedy
    held-out accuracy, or by pass@k, maj@k and response lengths over n samples per prompt when an
    ``evaluation`` is set.

    Args:
        model: where the weights, tokenizer and (for images) processor come from.
        reward: scores completions; its verifier decides held-out correctness.
        optimizer: optimizer factory, e.g. ``{class_path: torch.optim.AdamW, init_args: {lr: 3e-5}}``.
        lr_scheduler: optional learning-rate schedule, stepped after every optimizer step.
        heldout_max_new_tokens: generation length for held-out evaluation.
        max_skipped_steps_in_a_row: optimizer steps with a non-finite loss (or gradient norm) are
            dropped and counted (``train/skipped_steps``); this many in a row stop the run (exit 1).
        logprob_chunk_tokens: the LM head scores this many positions at a time (``k15.logprobs``):
            the trainer never holds more than a few [chunk, vocabulary] fp32 tensors.
        activation_checkpointing: recompute each decoder layer in backward instead of keeping
            its activations (``checkpoint_decoder_layers``): long contexts' memory for one more forward.
        lora: train low-rank adapters instead of every weight, over a 4-bit base for QLoRA
            (``k15.lora.LoRA``; None: full fine-tuning).
        evaluation: validate by sampling n responses per held-out prompt (``k15.evaluation.Evaluation``:
            pass@k, maj@k, response lengths, overall and by difficulty, and a JSON file), on the
            module's rollout engine where it has one (``evaluation_engine``), else HF generate
            (None: greedy ``heldout/accuracy``, one response per prompt).
    """

    def __init__(
        self,
        model: ModelSource,
        reward: RewardModule | None = None,
        optimizer: OptimizerCallable = default_optimizer,
        lr_scheduler: LRSchedulerCallable | None = None,
        heldout_max_new_tokens: int = 64,
        max_skipped_steps_in_a_row: int = 3,
        logprob_chunk_tokens: int = 1024,
        activation_checkpointing: bool = False,
        lora: LoRA | None = None,
        evaluation: Evaluation | None = None,
    ):
        super().__init__()
        check_learning_rates(optimizer)
        require_at_least_one(
            "model", heldout_max_new_tokens=heldout_max_new_tokens, logprob_chunk_tokens=logprob_chunk_tokens
        )
        self.logprob_chunk_tokens = logprob_chunk_tokens
        self.activation_checkpointing = activation_checkpointing
        self.lora = lora
        self.source = model
        self.processor = model.processor()  # None for a text-only model
        self.tokenizer = self.processor.tokenizer if self.processor is not None else model.tokenizer()
        self.prompt_format = model.prompt_format()  # chat template or plain: the data module encodes with it
        self.reward = reward or RewardModule()
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.heldout_max_new_tokens = heldout_max_new_tokens
        self.model: PreTrainedModel | None = None
        self.guard = FiniteGuard(max_skipped_steps_in_a_row)
        if evaluation is not None and evaluation.majority_vote and not hasattr(self.reward.verifier, "extract"):
            raise ValueError(
                f"model.evaluation.majority_vote: the verifier ({type(self.reward.verifier).__name__}) extracts no "
                "final answer to vote on; set majority_vote: false"
            )
        self.evaluation = evaluation
        self.heldout_samples: list[PromptSamples] = []  # this rank's, gathered at the end of validation

    @cached_property
    def context_tokens(self) -> int:
        """The longest sequence the model takes (prompt + completion, image tokens included)."""
        return self.source.max_positions()

    @property
    def heldout_new_tokens(self) -> int:
        """A held-out response's cap: the evaluation's, else ``heldout_max_new_tokens``."""
        return (self.evaluation and self.evaluation.max_new_tokens) or self.heldout_max_new_tokens

    @property
    def max_heldout_prompt_tokens(self) -> int:
        """Held-out prompts longer than this leave no room for their answer (in the model's context,
        and the engine's when an evaluation samples on it): the data skips them."""
        engine = self.evaluation_engine() if self.evaluation is not None else None
        context = min(self.context_tokens, (engine and engine.max_model_len) or self.context_tokens)
        return context - self.heldout_new_tokens

    def evaluation_engine(self) -> Engine | None:
        """The engine an evaluation samples on (None: HF generate on the live model)."""
        return None

    @property
    def unsampled_token_ids(self) -> tuple[int, ...]:
        """Tokens the policy must never generate: a vision model's image placeholder stands only
        for an image (one sampled into a response would leave the update an image short)."""
        return () if self.processor is None else (self.tokenizer.convert_tokens_to_ids(self.processor.image_token),)

    def configure_model(self) -> None:
        if self.model is None:
            self.model = self.source.model().train()  # from_pretrained returns eval mode
            if self.lora is not None:
                self.check_lora_strategy()
                self.lora.apply(self.model, self.trainer.strategy.root_device)
            if self.activation_checkpointing:
                checkpoint_decoder_layers(self.model)
            if self._device_mesh is not None:  # ModelParallelStrategy / FSDP2Strategy: FSDP2 over every rank
                strategy = self.trainer.strategy
                if isinstance(strategy, FSDP2Strategy):
                    if strategy.sequence_parallel_size > 1:
                        enable_sequence_parallel(self.model, strategy.device_mesh["sequence_parallel"].get_group())
                    shard_decoder(self.model, strategy.shard_mesh, **strategy.fsdp_kwargs())
                else:
                    shard_decoder(self.model, self._device_mesh["data_parallel"])

    def check_lora_strategy(self) -> None:
        """4-bit codes are stored in the model's dtype; FSDP2 casting them to another would scramble
        them. ZeRO-3 builds parameters as empty partitions, which no linear layer can be quantized from."""
        strategy = self.trainer.strategy
        if isinstance(strategy, ZeRO3Strategy):
            raise ValueError("model.lora: LoRA and QLoRA run under FSDP2Strategy or one device, not ZeRO3Strategy")
        cast = getattr(strategy, "param_dtype", None)
        if self.lora.quantize_base and cast not in (None, self.model.dtype):
            raise ValueError(
                f"trainer.strategy.init_args.param_dtype is {cast}, but QLoRA stores its 4-bit base in the model's "
                f"dtype ({self.model.dtype}) and FSDP2 would cast those codes: set param_dtype: null and load the "
                "model in the compute dtype (model.model.init_args.dtype); the adapters stay fp32 (peft upcasts them)"
            )

    def configure_callbacks(self):
        return [CheckpointOnSignal()]

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        require_finite_weights(self.model, "a checkpoint", self.agree)
        # every rank's generators: under a sharded strategy only rank 0 writes this part of the checkpoint
        checkpoint["k15"] = {"rng_by_rank": all_ranks(rng_states()), "finite_guard": self.guard.state_dict()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "k15" in checkpoint:
            saved = checkpoint["k15"]
            states = saved.get("rng_by_rank") or [saved["rng"]]  # "rng": one process's, before 2026-12
            if len(states) != self.trainer.world_size:
                raise K15Error(
                    f"the checkpoint holds the random states of {len(states)} process(es), this run has "
                    f"{self.trainer.world_size}: resume with as many processes as the run had"
                )
            restore_rng_states(states[self.trainer.global_rank])
            self.guard.load_state_dict(checkpoint["k15"]["finite_guard"])

    def agree(self, ok: bool) -> bool:
        """True only if ``ok`` on every rank (all ranks must take the same branch around collectives)."""
        return self.trainer.strategy.reduce_boolean_decision(ok, all=True)

    def configure_optimizers(self):
        trained = [p for p in self.model.parameters() if p.requires_grad]  # LoRA: the adapters only
        return configured_optimizers(trained, self.optimizer_factory, self.lr_scheduler_factory)

    def validation_step(self, batch: PromptBatch, batch_idx: int) -> None:
        if self.evaluation is not None:
            return self.sampled_validation_step(batch, batch_idx)
        requests = [
            Request(ids, 1, self.heldout_max_new_tokens, images, inputs)
            for ids, images, inputs in zip(batch.prompt_ids, batch.images, batch.model_inputs, strict=True)
        ]
        completions = hf_sample(
            self.model, requests, Sampling(temperature=0.0, banned_token_ids=self.unsampled_token_ids)
        )
        texts = self.tokenizer.batch_decode([c[0].token_ids for c in completions], skip_special_tokens=True)
        correct, _ = self.reward.judge(batch.prompts, texts, batch.answers)
        self.log("heldout/accuracy", correct.mean(), batch_size=len(batch), prog_bar=True, sync_dist=True)
        # what long2short trades against accuracy (k1.5 §2.4): greedy response length, <eos> included
        tokens = sum(len(c[0].token_ids) for c in completions) / len(completions)
        self.log("heldout/tokens_mean", tokens, batch_size=len(batch), sync_dist=True)
        # taken here, so the next RL iteration's reward/verifier/* count that iteration's responses only
        counts = {key: float(n) for key, n in self.reward.verifier_counts("heldout/verifier/").items()}
        self.log_dict(counts, batch_size=len(batch), reduce_fx="sum", sync_dist=True)

    def on_validation_epoch_start(self) -> None:
        self.heldout_samples = []
        engine = self.evaluation_engine()
        if self.evaluation is not None and engine is not None:
            engine.sync(self.model)  # π_θ as it is now (collective when sharded)

    def sampled_validation_step(self, batch: PromptBatch, batch_idx: int) -> None:
        """n samples per prompt, judged, and kept per prompt for ``on_validation_epoch_end``."""
        evaluation, n = self.evaluation, self.evaluation.samples
        requests = [
            Request(ids, n, self.heldout_new_tokens, images, inputs)
            for ids, images, inputs in zip(batch.prompt_ids, batch.images, batch.model_inputs, strict=True)
        ]
        sampling = Sampling(
            temperature=evaluation.temperature,
            top_p=evaluation.top_p,
            seed=evaluation.first_seed(batch_idx, self.trainer.global_rank, self.trainer.world_size),
            banned_token_ids=self.unsampled_token_ids,
        )
        engine = self.evaluation_engine()
        groups = hf_sample(self.model, requests, sampling) if engine is None else engine.sample(requests, sampling)
        responses = [c for group in groups for c in group]  # prompt-major: response j of prompt i is i·n + j
        texts = self.tokenizer.batch_decode([c.token_ids for c in responses], skip_special_tokens=True)
        questions, references = ([v for v in values for _ in range(n)] for values in (batch.prompts, batch.answers))
        correct, _ = self.reward.judge(questions, texts, references)
        answers = [self.reward.verifier.extract(t) for t in texts] if evaluation.majority_vote else [None] * len(texts)
        for i, (prompt, reference, difficulty) in enumerate(
            zip(batch.prompts, batch.answers, batch.difficulties, strict=True)
        ):
            rows = slice(i * n, (i + 1) * n)
            tokens = [len(c.token_ids) for c in responses[rows]]
            verdicts = [bool(c) for c in correct[rows].tolist()]
            self.heldout_samples.append(PromptSamples(difficulty, verdicts, answers[rows], tokens, prompt, reference))
        counts = {key: float(count) for key, count in self.reward.verifier_counts("heldout/verifier/").items()}
        self.log_dict(counts, batch_size=len(batch), reduce_fx="sum", sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        """Every rank's held-out samples → the metrics, logged and written to the JSON file."""
        if self.evaluation is None:
            return
        engine = self.evaluation_engine()
        if engine is not None:
            engine.sleep()
        samples = [p for rank in all_ranks(self.heldout_samples) for p in rank]
        result = evaluate(samples, self.evaluation.ks, self.evaluation.majority_vote)
        metrics = flat_metrics(result)
        for key, value in metrics.items():  # the same on every rank: made from the gathered samples
            self.log(key, value, prog_bar=key == "heldout/pass@1")
        if self.trainer.sanity_checking:  # Lightning drops sanity-check metrics; this is the curve's start
            log_iteration(self.trainer, metrics, self.trainer.global_step)
        self.write_evaluation(result, samples)

    def write_evaluation(self, result: dict, samples: list[PromptSamples]) -> None:
        """The evaluation as JSON (rank 0): settings, metrics overall and by difficulty, every prompt's samples."""
        path = self.evaluation.json_path or str(Path(self.trainer.log_dir) / "validate.json")  # log_dir: collective
        if not self.trainer.is_global_zero:
            return
        engine = self.evaluation_engine()
        document = {
            "model": getattr(self.source, "path", type(self.source).__name__),
            "ckpt_path": self.trainer.ckpt_path,
            "global_step": self.trainer.global_step,  # optimizer steps, as checkpoint names count them
            "evaluation": self.evaluation.settings() | {"max_new_tokens": self.heldout_new_tokens},
            "engine": "hf_sample" if engine is None else engine.kind,  # what sampled the responses
            **result,
            "records": [asdict(p) for p in samples],
        }
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(document, indent=1) + "\n")
