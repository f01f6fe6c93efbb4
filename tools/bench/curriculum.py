"""The paper's sampling findings in miniature: curriculum vs uniform, prioritized vs uniform.

    python tools/bench/curriculum.py [--seeds 0 1 --iterations 40 --eval-every 5]

Run README command 1 first (``runs/tiny_sft/hf``). Four arms of the tiny RL recipe
(``conf/tiny.yaml`` + ``conf/data/curriculum.yaml``), the same budget of iterations, each over
``--seeds``:

    uniform      one stage, uniform sampling
    curriculum   1–3 digit operands for the first 10 iterations, then all; uniform
    prioritized  one stage, weight max(1 − s_i, 0.05)
    both         curriculum and prioritized (the overlay as shipped)

Held-out greedy accuracy (400 prompts, 1–5 digits) every ``--eval-every`` iterations is plotted
against iterations (mean over seeds) to ``docs/curriculum.png``. Prints one JSON line: each arm's
curve (mean), its accuracy after the last iteration per seed, and the mean of its curve after
the first evaluation (a steadier summary than one point).
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
ARMS = {
    "uniform": ["--data.init_args.stages=[{until: null}]", "--data.init_args.sampling=uniform"],
    "curriculum": ["--data.init_args.sampling=uniform"],
    "prioritized": ["--data.init_args.stages=[{until: null}]"],
    "both": [],
}


def run(arm: str, seed: int, args, out: Path) -> list[tuple[int, float]]:
    name = f"{arm}_{seed}"
    command = [
        sys.executable,
        "-m",
        "k15",
        "fit",
        "-c",
        "conf/tiny.yaml",
        "-c",
        "conf/data/curriculum.yaml",
        *ARMS[arm],
        f"--seed_everything={seed}",
        f"--data.init_args.seed={seed}",
        f"--data.init_args.iterations={args.iterations}",
        f"--trainer.val_check_interval={args.eval_every}",
        f"--trainer.logger.init_args.save_dir={out}",
        f"--trainer.logger.init_args.name={name}",
        "--trainer.callbacks=[k15.summary.RunSummary]",
        "--trainer.enable_progress_bar=false",
    ]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
    events = EventAccumulator(str(out / name / "version_0"))
    events.Reload()
    points = events.Scalars("heldout/accuracy")
    # the sanity pass before training is iteration 0; an evaluation after iteration i is at i + 1
    return [(0, points[0].value)] + [(p.step + 1, p.value) for p in points[1:]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--plot", default="docs/curriculum.png")
    args = parser.parse_args()
    if not (ROOT / "runs/tiny_sft/hf").exists():
        sys.exit("runs/tiny_sft/hf not found: run README command 1 first")

    curves = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for arm in ARMS:
                curves.setdefault(arm, []).append(run(arm, seed, args, Path(tmp)))

    result = {}
    for arm, runs in curves.items():
        steps = [s for s, _ in runs[0]]
        mean = [round(statistics.mean(r[i][1] for r in runs), 4) for i in range(len(steps))]
        result[arm] = {
            "iterations": steps,
            "heldout_acc_mean": mean,
            "final_per_seed": [round(r[-1][1], 4) for r in runs],
            "mean_after_first_eval": round(statistics.mean(mean[1:]), 4),
        }

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for arm, r in result.items():
        ax.plot(r["iterations"], r["heldout_acc_mean"], marker="o", label=arm)
    ax.set_xlabel("RL iteration")
    ax.set_ylabel(f"held-out greedy accuracy (mean of {len(args.seeds)} seeds)")
    ax.set_title("tiny recipe: curriculum and prioritized sampling")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    (ROOT / args.plot).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(ROOT / args.plot, dpi=120)
    print(json.dumps({"seeds": args.seeds, "plot": args.plot, **result}))


if __name__ == "__main__":
    main()
