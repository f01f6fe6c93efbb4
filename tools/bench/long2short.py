"""The k1.5 report's long2short comparison (§2.4, Fig. 7) in miniature: four ways to shorten one
long-CoT model, each point accuracy against mean response tokens.

    python tools/bench/long2short.py [--prompts 1000 --samples 8 --eval-samples 4]

Needs the long model ``runs/tiny_long/hf`` (verbose SFT then k1.5 RL without a length penalty) and
the short model ``runs/tiny/hf`` (the plain tiny recipe), both descended from ``runs/tiny_sft/hf``:

    python -m k15 fit -c conf/tiny_sft.yaml && python -m k15 fit -c conf/tiny.yaml
    python tools/make_shards.py --style mix --out shards/addition_long
    python -m k15 fit -c conf/tiny_long_sft.yaml && python -m k15 fit -c conf/tiny.yaml -c conf/tiny_long.yaml

From the long model, each method as its recipe ships (nothing tuned here):

    merge       tools/merge.py long short --ratio 0.5 (and 0.25, 0.75: the merge's own trade-off curve)
    shortest    shortest rejection sampling (tools/long2short_samples.py, n = --samples on --prompts
                training prompts), then SFT on the shortest correct (conf/long2short_sft.yaml)
    dpo         DPO on pairs from the same samples (conf/tiny_dpo.yaml)
    rl          long2short RL: the length penalty from iteration 0, half the budget (conf/short_cot.yaml)

Every model (the long and short ones too) is evaluated the same way: ``k15 validate`` with
``conf/eval/pass_at_k.yaml``, --eval-samples samples per held-out prompt at τ = 1 on vLLM, 128
new tokens. ``tools/report.py`` plots pass@1 against mean tokens to ``docs/long2short.png``.
Prints one JSON line: each model's pass@1, mean tokens, and token efficiency = pass@1 per 100
response tokens, the methods ranked by it, and each method's accuracy change and token ratio
against the long model.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LONG, SHORT = "runs/tiny_long/hf", "runs/tiny/hf"
LONG_CONFIGS = ["-c", "conf/tiny.yaml", "-c", "conf/tiny_long.yaml"]


def sh(*command: str) -> str:
    """Run a command from the repository root; its stdout (its last line is a tool's JSON)."""
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result.stdout


def k15(*args: str) -> str:
    return sh(sys.executable, "-m", "k15", *args)


def fit(config: list[str], model: str, out: Path, name: str, *extra: str) -> str:
    """One fine-tune from ``model``, logged and exported under ``out``; → the exported folder."""
    k15(
        "fit",
        *config,
        f"--model.init_args.model.init_args.path={model}",
        f"--trainer.logger.init_args.save_dir={out}",
        f"--trainer.logger.init_args.name={name}",
        f"--trainer.callbacks=[{{class_path: k15.export.ExportPretrained, init_args: {{dirpath: {out}/{name}_hf}}}}]",
        "--trainer.enable_progress_bar=false",
        *extra,
    )
    return f"{out}/{name}_hf"


def evaluate(model: str, out: Path, name: str, args) -> dict:
    """pass@1 and mean tokens of ``model`` on the 400 held-out prompts (the long task's shards)."""
    k15(
        "validate",
        *LONG_CONFIGS,
        "-c",
        "conf/eval/pass_at_k.yaml",
        f"--model.init_args.model.init_args.path={model}",
        f"--model.init_args.evaluation.init_args.samples={args.eval_samples}",
        f"--trainer.logger.init_args.save_dir={out}/eval",  # apart from the fits' logs of the same name
        f"--trainer.logger.init_args.name={name}",
        "--trainer.callbacks=[]",
        "--trainer.enable_progress_bar=false",
    )
    return json.loads((out / "eval" / name / "version_0" / "validate.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=1000, help="training prompts sampled for rejection / DPO")
    parser.add_argument("--samples", type=int, default=8, help="samples per prompt for rejection / DPO")
    parser.add_argument("--eval-samples", type=int, default=4, help="samples per held-out prompt")
    parser.add_argument("--plot", default="docs/long2short.png")
    args = parser.parse_args()
    for folder in (LONG, SHORT):
        if not (ROOT / folder / "config.json").exists():
            sys.exit(f"{folder} not found: train it first (see this script's docstring)")

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        sampled = json.loads(
            sh(
                sys.executable, "tools/long2short_samples.py", "--model", LONG,
                "--shards", "shards/addition_long/train-{000000..000009}.tar.gz",
                "--prompts", str(args.prompts), "--samples", str(args.samples), "--max-new-tokens", "128",
                "--out", str(out / "short_sft"), "--pairs-out", str(out / "dpo_pairs"),
            ).splitlines()[-1]
        )  # fmt: skip
        models = {"long": LONG, "short": SHORT}
        for ratio in (0.25, 0.5, 0.75):
            models[f"merge {ratio}"] = f"{out}/merge_{ratio}_hf"
            sh(sys.executable, "tools/merge.py", LONG, SHORT, "--ratio", str(ratio), "--out", models[f"merge {ratio}"])
        models["shortest"] = fit(
            ["-c", "conf/long2short_sft.yaml"],
            LONG,
            out,
            "shortest",
            f"--data.init_args.train_shards={out}/short_sft/*",
        )
        models["dpo"] = fit(
            ["-c", "conf/tiny_dpo.yaml"], LONG, out, "dpo", f"--data.init_args.train_shards={out}/dpo_pairs/*"
        )
        models["rl"] = fit([*LONG_CONFIGS, "-c", "conf/short_cot.yaml"], LONG, out, "rl")
        results = {name: evaluate(model, out, name.replace(" ", "_"), args) for name, model in models.items()}
        files = [f"{name}={out}/eval/{name.replace(' ', '_')}/version_0/validate.json" for name in results]
        sh(sys.executable, "tools/report.py", *files, "--out", args.plot)

    points = {}
    for name, result in results.items():
        accuracy, tokens = result["overall"]["pass@1"], result["overall"]["tokens_mean"]
        points[name] = {
            "pass@1": round(accuracy, 4),
            "tokens_mean": round(tokens, 2),
            "token_efficiency": round(100 * accuracy / tokens, 3),
        }
    long = points["long"]
    methods = [name for name in points if name not in ("long", "short")]
    for name in methods:
        points[name] |= {
            "accuracy_change": round(points[name]["pass@1"] - long["pass@1"], 4),
            "token_ratio": round(points[name]["tokens_mean"] / long["tokens_mean"], 3),
        }
    ranking = sorted(methods, key=lambda name: -points[name]["token_efficiency"])
    print(
        json.dumps({"plot": args.plot, "ranking_by_token_efficiency": ranking, "models": points, "sampling": sampled})
    )


if __name__ == "__main__":
    main()
