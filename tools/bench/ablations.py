"""The k1.5 report's RL comparisons in miniature, each arm one YAML overlay or key of the tiny recipe.

    python tools/bench/ablations.py losses [--seeds 0 1 --iterations 40]
    python tools/bench/ablations.py length_penalty [--seeds 0 1]

losses          k1.5's mirror-descent loss vs ReST (no negative gradient: the report's Fig. 10) vs
                GRPO vs Dr. GRPO, from the plain SFT model (``runs/tiny_sft/hf``, README command 1)
length_penalty  the k1.5 length reward off vs on, from the verbose long-CoT SFT model
                (``conf/tiny_long_sft.yaml`` → ``runs/tiny_long_sft/hf``)

Every arm runs the same iterations, seeds and update: ``--steps-per-iteration`` optimizer steps a
pass (1: the recipe's one full-batch step, which after the optimizer reset is Adam's first step,
≈ lr · sign(g), so the losses differ only in their gradients' signs; more steps let the size of
each sample's weight show, and make the update larger). Held-out
greedy accuracy (400 prompts) every ``--eval-every`` iterations and the rollouts' mean response
tokens every iteration are plotted against iterations (mean over seeds) to
``docs/ablation_<study>_<steps>step.png``. Prints one JSON line per study: each arm's curves, its final
accuracy and tokens per seed, and the mean accuracy after the first evaluation (steadier than
one point).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = Path(__file__).resolve().parents[2]
PENALTY = (
    "--model.init_args.reward.init_args.shaping=[{{class_path: k15.reward.LengthPenalty, init_args: {{weight: {}}}}}]"
)
STUDIES = {
    "losses": {
        "configs": ["conf/tiny.yaml"],
        "model": "runs/tiny_sft/hf",
        "arms": {
            "k1.5": [],
            "ReST": ["-c", "conf/loss/rest.yaml"],
            "GRPO": ["-c", "conf/loss/grpo.yaml"],
            "Dr.GRPO": ["-c", "conf/loss/dr_grpo.yaml"],
        },
    },
    "length_penalty": {
        "configs": ["conf/tiny.yaml", "conf/tiny_long.yaml"],
        "model": "runs/tiny_long_sft/hf",
        "arms": {"off": [PENALTY.format(0.0)], "on": [PENALTY.format(1.0)]},
    },
}


def run(study: dict, arm: str, seed: int, args, out: Path) -> dict:
    name = f"{arm}_{seed}"
    configs = [arg for config in study["configs"] for arg in ("-c", config)]
    samples = 8 * 16  # k · P of the tiny recipe
    command = [
        sys.executable,
        "-m",
        "k15",
        "fit",
        *configs,
        *study["arms"][arm],
        f"--model.init_args.model.init_args.path={args.model or study['model']}",
        f"--model.init_args.trajectories_per_step={samples // args.steps_per_iteration}",
        f"--seed_everything={seed}",
        f"--data.init_args.seed={seed}",
        f"--model.init_args.rollout.init_args.seed={seed}",
        f"--model.init_args.seed={seed}",
        f"--data.init_args.iterations={args.iterations}",
        f"--trainer.val_check_interval={args.eval_every}",
        f"--trainer.logger.init_args.save_dir={out}",
        f"--trainer.logger.init_args.name={name}",
        "--trainer.callbacks=[k15.summary.RunSummary]",  # no checkpoints, no export over the recipe's
        "--trainer.enable_progress_bar=false",
    ]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
    events = EventAccumulator(str(out / name / "version_0"))
    events.Reload()
    accuracy = events.Scalars("heldout/accuracy")
    # the sanity pass before training is iteration 0; an evaluation after iteration i is at i + 1
    return {
        "accuracy": [(0, accuracy[0].value)] + [(e.step + 1, e.value) for e in accuracy[1:]],
        "tokens": [(e.step + 1, e.value) for e in events.Scalars("rollout/response_len_mean")],
    }


def mean_curve(runs: list[list[tuple[int, float]]]) -> tuple[list[int], list[float]]:
    steps = [step for step, _ in runs[0]]
    return steps, [round(statistics.mean(r[i][1] for r in runs), 4) for i in range(len(steps))]


def plot(name: str, result: dict, seeds: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (acc, tokens) = plt.subplots(1, 2, figsize=(10, 4))
    for arm, r in result.items():
        acc.plot(r["iterations"], r["heldout_acc_mean"], marker="o", label=arm)
        tokens.plot(r["token_iterations"], r["response_tokens_mean"], label=arm)
    acc.set(xlabel="RL iteration", ylabel=f"held-out greedy accuracy (mean of {seeds} seeds)")
    tokens.set(xlabel="RL iteration", ylabel="rollout mean response tokens")
    for ax in (acc, tokens):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"tiny recipe: {name.replace('_', ' ')}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def study_result(name: str, args) -> dict:
    study = STUDIES[name]
    model = ROOT / (args.model or study["model"])
    if not (model / "config.json").exists():
        sys.exit(f"{model} not found: train it first (see this script's docstring)")
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for arm in study["arms"]:
                runs.setdefault(arm, []).append(run(study, arm, seed, args, Path(tmp)))
    result = {}
    for arm, arm_runs in runs.items():
        iterations, accuracy = mean_curve([r["accuracy"] for r in arm_runs])
        token_iterations, tokens = mean_curve([r["tokens"] for r in arm_runs])
        result[arm] = {
            "iterations": iterations,
            "heldout_acc_mean": accuracy,
            "token_iterations": token_iterations,
            "response_tokens_mean": tokens,
            "final_acc_per_seed": [round(r["accuracy"][-1][1], 4) for r in arm_runs],
            "final_tokens_per_seed": [round(r["tokens"][-1][1], 1) for r in arm_runs],
            "mean_acc_after_first_eval": round(statistics.mean(accuracy[1:]), 4),
        }
    path = ROOT / "docs" / f"ablation_{name}_{args.steps_per_iteration}step.png"
    plot(name, result, len(args.seeds), path)
    figures = {arm: {k: v for k, v in r.items() if "iterations" not in k} for arm, r in result.items()}
    return {"study": name, "seeds": args.seeds, "plot": str(path.relative_to(ROOT)), "arms": figures, "curves": result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("studies", nargs="+", choices=sorted(STUDIES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--steps-per-iteration", type=int, default=4, help="optimizer steps a pass over the rollouts")
    parser.add_argument("--model", help="start every arm from this save_pretrained folder instead")
    args = parser.parse_args()
    for name in args.studies:
        print(json.dumps(study_result(name, args)), flush=True)


if __name__ == "__main__":
    main()
