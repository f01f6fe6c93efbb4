"""Accuracy against response length, one labelled point per evaluated model: the shape of the k1.5
report's Fig. 7 (token efficiency), from the JSON files ``python -m k15 validate`` writes with an
evaluation (k15/evaluation.py, e.g. ``-c conf/eval/pass_at_k.yaml``).

    python tools/report.py sft=runs/sft_eval/version_0/validate.json rl=runs/rl_eval/version_0/validate.json \\
        --out docs/accuracy_vs_tokens.png [--metric maj@8] [--by-difficulty]

Each file is LABEL=PATH, or a PATH alone (labelled by the checkpoint or model it evaluated).
x: mean response tokens over every sample; y: pass@1 (``--metric``: any metric the files hold,
pass@k or maj@k); ``--by-difficulty`` adds a panel per difficulty. The last line printed is one
JSON object: the PNG's path, the metric and the points.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

X = "tokens_mean"


def load(argument: str) -> tuple[str, dict]:
    """LABEL=PATH (or PATH) → (label, the validate JSON)."""
    label, given, path = argument.partition("=")
    if not given or not Path(path).is_file():  # PATH alone, or a path that itself holds "="
        label, path = "", argument
    if not Path(path).is_file():
        raise SystemExit(f"report: no file {path!r} (give LABEL=PATH or PATH of a validate JSON)")
    document = json.loads(Path(path).read_text())
    if "overall" not in document:
        raise SystemExit(f"report: {path} holds no evaluation (run validate with model.init_args.evaluation)")
    return label or document.get("ckpt_path") or document.get("model") or path, document


def point(label: str, metrics: dict, metric: str, where: str) -> dict:
    if metric not in metrics:
        known = sorted(k for k in metrics if "@" in k)
        raise SystemExit(f"report: {where} has no {metric!r}; it has {known}")
    return {"label": label, X: metrics[X], metric: metrics[metric], "prompts": metrics["prompts"]}


def panels(runs: list[tuple[str, dict]], metric: str, by_difficulty: bool) -> dict[str, list[dict]]:
    """Panel title → its points: ``overall``, then ``difficulty <d>`` for every difficulty a file has."""
    out = {"overall": [point(label, doc["overall"], metric, label) for label, doc in runs]}
    if by_difficulty:
        difficulties = sorted({d for _, doc in runs for d in doc["by_difficulty"]}, key=int)
        for d in difficulties:
            out[f"difficulty {d}"] = [
                point(label, doc["by_difficulty"][d], metric, f"{label}, difficulty {d}")
                for label, doc in runs
                if d in doc["by_difficulty"]
            ]
    return out


def plot(figure: dict[str, list[dict]], metric: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    columns = min(3, len(figure))
    rows = -(-len(figure) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5 * columns, 4 * rows), squeeze=False)
    colors = {p["label"]: f"C{i % 10}" for i, p in enumerate(figure["overall"])}  # a model keeps its colour
    for ax, (title, points) in zip(axes.flat, figure.items(), strict=False):
        for p in points:
            ax.scatter(p[X], p[metric], color=colors[p["label"]], label=p["label"], zorder=2)
        ax.set(title=title, xlabel="mean response tokens", ylabel=metric)
        ax.ticklabel_format(useOffset=False)  # token counts as they are, not as an offset from 22.49
        ax.xaxis.set_major_locator(MaxNLocator(5))
        ax.margins(x=0.15, y=0.15)
        ax.grid(alpha=0.3)
        if title == "overall":  # a legend, not labels at the points: models close together overlap there
            ax.legend(fontsize=8)
    for ax in axes.flat[len(figure) :]:
        ax.axis("off")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", help="LABEL=PATH or PATH of a validate JSON, one per model")
    parser.add_argument("--out", type=Path, default=Path("accuracy_vs_tokens.png"), help="the PNG to write")
    parser.add_argument("--metric", default="pass@1", help="the y axis: pass@k or maj@k (default: pass@1)")
    parser.add_argument("--by-difficulty", action="store_true", help="a panel per difficulty besides the overall one")
    args = parser.parse_args(argv)
    runs = [load(argument) for argument in args.files]
    figure = panels(runs, args.metric, args.by_difficulty)
    plot(figure, args.metric, args.out)
    report = {"png": str(args.out), "metric": args.metric, "points": figure["overall"]}
    if args.by_difficulty:
        report["by_difficulty"] = {title: points for title, points in figure.items() if title != "overall"}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
