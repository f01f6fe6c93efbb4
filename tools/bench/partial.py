"""Partial rollouts vs whole rollouts on a task with long-tailed response lengths, same wall time.

    python tools/bench/partial.py [--seconds 150 --max-new-tokens 192 --segment-tokens 32 --model PATH]
    python tools/bench/partial.py --arms partial partial+tis partial+icepop --iterations 60 --seeds 0 1

The task: carry-chain addition where 85% of prompts have 1–5 digit operands (responses ≈ 12–52
tokens) and 15% have 8–16 (≈ 75–150 tokens), so a batch of 16 prompts × 8 samples nearly always
holds a few responses 3–10× the median, and without partial rollouts every iteration waits for
them. The bench first warms up a tiny model on this mix (``conf/tiny_sft.yaml``, ``--sft-steps``,
the same imperfect teacher; kept under ``runs/bench/`` for later runs, skipped with ``--model``),
then runs the real CLI twice (``conf/tiny.yaml``: vLLM where installed), identical but for
``rollout.segment_tokens`` (off vs ``--segment-tokens``), same hard cap ``--max-new-tokens``, each
for ``--seconds`` of fit, evaluating the 400 usual held-out prompts (1–5 digits) every ``--eval-every`` iterations.

Iteration time = RunSummary's ``perf/iteration_seconds`` (rollout + update; evaluation
excluded). Prints one JSON line: ``median_time_reduction`` / ``p90_time_reduction`` = 1 −
partial / whole, each run's figures, its curve of (training seconds, trained tokens, held-out
accuracy), and both accuracies at the longest training time both reached.

``--arms`` adds partial runs with an off-policy correction (``conf/off_policy/{tis,icepop}.yaml``:
importance weights π_θi/μ for the segments older policies sampled). Those compare at equal
iterations (``--iterations``; their cost is the same), over ``--seeds``: each arm's late-run
held-out accuracy (the evaluations in the second half: mean, min, std), the noise the plain
partial run showed.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from k15.data.arithmetic import sample_problem, teacher_solution
from k15.data.shards import write_shards

ROOT = Path(__file__).resolve().parents[2]
SHORT, LONG, LONG_SHARE = range(1, 6), range(8, 17), 0.15  # operand digits
ARMS = ("whole", "partial", "partial+tis", "partial+icepop")


def long_tailed_shards(folder: Path, count: int, seed: int = 1) -> str:
    """Prompts with warm-up traces (the imperfect teacher's), difficulty from the long-tailed mix."""
    rng, records = random.Random(seed), []
    for _ in range(count):
        problem = sample_problem(rng, rng.choice(LONG if rng.random() < LONG_SHARE else SHORT))
        solution, _ = teacher_solution(problem, rng)
        records.append(
            {"prompt": problem.prompt, "answer": problem.answer, "difficulty": problem.difficulty, "solution": solution}
        )
    write_shards(records, f"{folder}/train-%06d.tar.gz", records_per_shard=5000)
    return f"{folder}/train-*.tar.gz"


def warm_up(args, shards: str, out: Path) -> str:
    """SFT on the long-tailed mix, so the policy really writes the long chains (kept in ``out``
    and reused by later runs of the bench: delete it to warm up again)."""
    if (out / "sft_hf" / "config.json").exists():
        return f"{out}/sft_hf"
    command = [
        sys.executable,
        "-m",
        "k15",
        "fit",
        "-c",
        "conf/tiny_sft.yaml",
        f"--data.init_args.train_shards={shards}",
        f"--data.init_args.steps={args.sft_steps}",
        f"--trainer.val_check_interval={args.sft_steps}",
        f"--trainer.logger.init_args.save_dir={out}",
        f"--trainer.callbacks=[{{class_path: k15.export.ExportPretrained, init_args: {{dirpath: {out}/sft_hf}}}}, "
        "k15.summary.RunSummary]",
        "--trainer.enable_progress_bar=false",
    ]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
    return f"{out}/sft_hf"


def run(name: str, args, model: str, shards: str, out: Path, segment_tokens: int | None, seed: int = 0) -> dict:
    """One fit of arm ``name`` (``partial+tis``: partial rollouts with ``conf/off_policy/tis.yaml``), logged
    under ``name`` and the seed."""
    seconds = args.seconds
    budget = (
        [f"--data.init_args.iterations={args.iterations}"]
        if args.iterations
        else ["--data.init_args.iterations=100000", f"--trainer.max_time=00:00:{seconds // 60:02d}:{seconds % 60:02d}"]
    )
    correction = name.partition("+")[2]
    name = f"{name}_seed{seed}"
    command = [
        sys.executable,
        "-m",
        "k15",
        "fit",
        "-c",
        "conf/tiny.yaml",
        f"--model.init_args.model.init_args.path={model}",
        f"--data.init_args.train_shards={shards}",
        *budget,
        f"--seed_everything={seed}",  # a seed changes the prompts, the samples and the update order
        f"--data.init_args.seed={seed}",
        f"--model.init_args.rollout.init_args.seed={seed}",
        f"--model.init_args.seed={seed}",
        f"--trainer.val_check_interval={args.eval_every}",
        f"--model.init_args.rollout.init_args.max_new_tokens={args.max_new_tokens}",
        f"--trainer.logger.init_args.save_dir={out}",
        f"--trainer.logger.init_args.name={name}",
        "--trainer.callbacks=[k15.summary.RunSummary]",  # no checkpoints, no export over runs/tiny/hf
        "--trainer.enable_progress_bar=false",
    ]
    command += ["-c", f"conf/off_policy/{correction}.yaml"] if correction else []
    command += (
        []
        if segment_tokens is None
        else [
            f"--model.init_args.rollout.init_args.segment_tokens={segment_tokens}",
            f"--model.init_args.rollout.init_args.segments_in_loss={args.segments_in_loss}",
        ]
    )
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
    log_dir = out / name / "version_0"
    summary = json.loads((log_dir / "summary.json").read_text())
    events = EventAccumulator(str(log_dir))
    events.Reload()
    iteration_s = {e.step: e.value for e in events.Scalars("perf/iteration_seconds")}
    tokens = {e.step: e.value for e in events.Scalars("perf/trained_tokens")}
    accuracy = events.Scalars("heldout/accuracy")
    curve = [[0.0, 0, round(accuracy[0].value, 4)]]  # the sanity pass, before any update
    for e in accuracy[1:]:
        curve.append(
            [
                round(sum(s for step, s in iteration_s.items() if step <= e.step), 1),
                int(tokens[e.step]),
                round(e.value, 4),
            ]
        )
    tags = (
        "rollout/seconds",
        "rollout/sync_seconds",
        "rollout/stale_token_share",
        "rollout/buffer_groups",
        "rollout/finish_budget",
        "train/is_weight_mean",
        "train/is_clipped_share",
    )
    scalars = {tag: [e.value for e in events.Scalars(tag)] for tag in tags if tag in events.Tags()["scalars"]}
    late = [acc for seconds, _, acc in curve if seconds > curve[-1][0] / 2]
    return {
        "seed": seed,
        "iterations": len(iteration_s),
        "iteration_s_median": summary["iteration_s_median"],
        "iteration_s_p90": summary["iteration_s_p90"],
        "trained_tokens": summary["trained_tokens"],
        "training_s": round(sum(iteration_s.values()), 1),
        "heldout_acc_before": summary["heldout_acc_before"],
        "heldout_acc_last": curve[-1][2],
        "late_acc_mean": round(statistics.mean(late), 4),
        "late_acc_min": min(late),
        "late_acc_std": round(statistics.pstdev(late), 4),
        **{f"{tag.split('/')[1]}_median": round(statistics.median(v), 3) for tag, v in scalars.items()},
        "curve_train_s_tokens_acc": curve,
    }


def accuracy_at(curve: list, train_s: float) -> float:
    """Held-out accuracy at the last evaluation done within ``train_s`` seconds of training."""
    return [acc for seconds, _, acc in curve if seconds <= train_s][-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a warmed-up model folder to start RL from (default: warm one up here)")
    parser.add_argument("--sft-steps", type=int, default=600)
    parser.add_argument("--seconds", type=int, default=150, help="fit wall time of each run")
    parser.add_argument("--max-new-tokens", type=int, default=192, help="hard cap on a response, both runs")
    parser.add_argument("--segment-tokens", type=int, default=32, help="per-iteration budget of the partial run")
    parser.add_argument(
        "--segments-in-loss", choices=("all", "newest"), default="all", help="the partial run's segments_in_loss"
    )
    parser.add_argument("--eval-every", type=int, default=10, help="iterations between held-out evaluations")
    parser.add_argument(
        "--arms", nargs="+", default=["whole", "partial"], choices=ARMS, help="runs to compare (whole: no segments)"
    )
    parser.add_argument("--iterations", type=int, help="RL iterations per run instead of --seconds of fit")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run per arm and seed")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        shards = long_tailed_shards(Path(tmp) / "shards", 40000)
        model = args.model or warm_up(args, shards, ROOT / "runs" / "bench" / f"partial_sft_{args.sft_steps}")
        runs = {
            arm: [
                run(
                    arm,
                    args,
                    model,
                    shards,
                    Path(tmp) / "runs",
                    None if arm == "whole" else args.segment_tokens,
                    seed,
                )
                for seed in args.seeds
            ]
            for arm in args.arms
        }
    figures = {
        "arms": args.arms,
        "seeds": args.seeds,
        "late_acc_mean": {arm: round(statistics.mean(r["late_acc_mean"] for r in rs), 4) for arm, rs in runs.items()},
        "late_acc_min": {arm: min(r["late_acc_min"] for r in rs) for arm, rs in runs.items()},
        "late_acc_std": {arm: round(statistics.mean(r["late_acc_std"] for r in rs), 4) for arm, rs in runs.items()},
    }
    if {"whole", "partial"} <= runs.keys():
        whole, partial = runs["whole"][0], runs["partial"][0]
        common = min(whole["curve_train_s_tokens_acc"][-1][0], partial["curve_train_s_tokens_acc"][-1][0])
        figures |= {
            "median_time_reduction": round(1 - partial["iteration_s_median"] / whole["iteration_s_median"], 3),
            "p90_time_reduction": round(1 - partial["iteration_s_p90"] / whole["iteration_s_p90"], 3),
            "equal_training_s": common,
            "heldout_acc_at_equal_time": {
                "whole": accuracy_at(whole["curve_train_s_tokens_acc"], common),
                "partial": accuracy_at(partial["curve_train_s_tokens_acc"], common),
            },
        }
    figures |= {
        "max_new_tokens": args.max_new_tokens,
        "segment_tokens": args.segment_tokens,
        "segments_in_loss": args.segments_in_loss,
        "fit_seconds_each": None if args.iterations else args.seconds,
        "iterations_each": args.iterations,
        "sft_steps": None if args.model else args.sft_steps,
        "runs": runs,
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
