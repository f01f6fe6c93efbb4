"""QLoRA against full fine-tuning of the same model: memory, iteration time, and what RL gains.

    python tools/bench/qlora.py [--iterations 10 --heldout 200 --rank 16]

Run README command 1 first (``runs/tiny_sft/hf``). Two parts:

1. Memory, measured on built models (bytes of the tensors a training step keeps: parameters as
   stored, gradients, AdamW state after one real step), for the tiny SFT model and for a random
   102M-parameter Qwen2 with Qwen2.5's 152k vocabulary (``--medium``), full fine-tuning vs QLoRA
   (``k15.lora.LoRA``: NF4 base, rank-r fp32 adapters on every attention and MLP linear layer).
   ``memory_ratio`` = QLoRA bytes / full fine-tuning bytes. The 7B figure is the plan's arithmetic
   (``k15.memory``), as ``python -m k15 plan`` prints it for conf/long_cot_qlora_1gpu.yaml.
2. The tiny RL recipe (``conf/tiny.yaml``) from the SFT model, full fine-tuning (lr 1e-4, the
   recipe's) and QLoRA (``conf/qlora.yaml``, lr 3e-4) side by side for ``--iterations``, same seed:
   held-out greedy accuracy before and after, and the median iteration time (rollout + sync + update).

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from k15.lora import LoRA

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).parent))
from cli_runs import real_vocab_model  # noqa: E402


def training_bytes(model: torch.nn.Module) -> dict[str, int]:
    """Parameters (and buffers: NF4 scales live on the modules) as stored, then gradients and AdamW
    state after one step on a real loss: what a training process keeps between steps."""
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=1e-4)
    ids = torch.randint(4, 16, (2, 32))
    model.train()(ids).logits.float().log_softmax(-1).mean().backward()
    optimizer.step()
    nbytes = lambda ts: sum(t.numel() * t.element_size() for t in ts)  # noqa: E731
    quant_state = [
        t
        for m in model.modules()
        if getattr(m, "quant_state", None) is not None
        for t in m.quant_state.as_dict(packed=True).values()
        if isinstance(t, torch.Tensor)
    ]
    return {
        "trainable_parameters": sum(p.numel() for p in trained),
        "parameter_bytes": nbytes(model.parameters()) + nbytes(quant_state),
        "gradient_bytes": nbytes(p.grad for p in trained if p.grad is not None),
        "optimizer_bytes": nbytes(v for state in optimizer.state.values() for v in state.values() if v.dim() > 0),
    }


def memory(load, rank: int) -> dict:
    full = training_bytes(load())
    model = load()
    LoRA(rank=rank, alpha=2 * rank).apply(model, torch.device("cpu"))
    qlora = training_bytes(model)
    total = lambda b: b["parameter_bytes"] + b["gradient_bytes"] + b["optimizer_bytes"]  # noqa: E731
    return {"full": full, "qlora": qlora, "memory_ratio": round(total(qlora) / total(full), 4)}


def fit(name: str, workdir: Path, args, *overrides: str) -> dict:
    command = [
        *(sys.executable, "-m", "k15", "fit", "-c", str(ROOT / "conf/tiny.yaml"), *overrides),
        f"--data.init_args.iterations={args.iterations}",
        f"--trainer.val_check_interval={args.iterations}",
        f"--data.init_args.heldout_prompts={args.heldout}",
        f"--trainer.logger.init_args.save_dir={workdir}",
        f"--trainer.logger.init_args.name={name}",
        "--trainer.callbacks=[k15.summary.RunSummary]",
        "--trainer.enable_progress_bar=false",
    ]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
    summary = json.loads((workdir / name / "version_0/summary.json").read_text())
    return {
        "heldout_before": round(summary["heldout_acc_before"], 4),
        "heldout_after": round(summary["heldout_acc_after"], 4),
        "gain": round(summary["heldout_acc_after"] - summary["heldout_acc_before"], 4),
        "iteration_s_median": summary["iteration_s_median"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--heldout", type=int, default=200)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--medium", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    sft = ROOT / "runs/tiny_sft/hf"
    if not sft.exists():
        sys.exit("runs/tiny_sft/hf not found: run README command 1 first")
    from transformers import AutoModelForCausalLM

    result = {"rank": args.rank, "tiny": memory(lambda: AutoModelForCausalLM.from_pretrained(sft), args.rank)}
    with tempfile.TemporaryDirectory() as tmp:
        if args.medium:
            folder = real_vocab_model(Path(tmp) / "medium", 152_064, hidden_size=512, num_layers=8)
            result["medium_152k_vocab"] = memory(lambda: AutoModelForCausalLM.from_pretrained(folder), args.rank)
        full = fit("full", Path(tmp), args)
        qlora_lr = "--model.init_args.optimizer.init_args.lr=3e-4"
        qlora = fit("qlora", Path(tmp), args, "-c", str(ROOT / "conf/qlora.yaml"), qlora_lr)
    result["rl"] = {"iterations": args.iterations, "heldout_prompts": args.heldout, "full": full, "qlora": qlora}
    result["iteration_time_ratio"] = round(qlora["iteration_s_median"] / full["iteration_s_median"], 3)
    result["heldout_gain_qlora_vs_full"] = [qlora["gain"], full["gain"]]
    result["plan_7b_32k_1gpu_gib"] = plan_7b()
    result["memory_ratio"] = result["tiny"]["memory_ratio"]
    print(json.dumps(result))


def plan_7b() -> dict:
    """Parameters + gradients + optimizer of the 7B recipe on one GPU, QLoRA vs full fine-tuning, from the plan."""
    from dataclasses import replace

    from k15.cli import parsed_config
    from k15.memory import GIB, breakdown
    from k15.plan import read_setup

    files = [arg for f in ("long_cot", "qlora", "long_cot_qlora_1gpu") for arg in ("-c", str(ROOT / f"conf/{f}.yaml"))]
    setup, _ = read_setup(parsed_config(files))
    out = {}
    for name, p in (("qlora", setup), ("full_bf16", replace(setup, adapters=None))):
        b = breakdown(p)
        kept = sum(b["lines"][k] for k in ("parameters", "gradients", "optimizer"))
        out[name] = {
            "parameters_gradients_optimizer": round(kept / GIB, 2),
            "update_peak": round(b["update_peak"] / GIB, 2),
            "fits_80": b["fits"],
        }
    return out


if __name__ == "__main__":
    main()
