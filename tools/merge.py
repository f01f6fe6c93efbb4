"""Long2short by model merging (k1.5 §2.4): average the weights of a long-CoT and a short-CoT model.

    python tools/merge.py runs/tiny_long/hf runs/tiny/hf --ratio 0.5 --out runs/merged/hf

    W = ratio · W_long + (1 − ratio) · W_short        for every floating-point tensor

computed in at least fp32 and stored in LONG's dtype; other tensors (integer buffers) must be
equal in both and are copied. The two folders must hold the same tensor names and shapes (the
same architecture, and the same vocabulary); the merge refuses, naming the first tensor that
differs. Averaging only makes sense between models that share a base (k1.5 merges a long and a
short model trained from one), e.g. the tiny recipe's runs/tiny_long/hf and runs/tiny/hf, which
both descend from runs/tiny_sft/hf.

LONG and SHORT are ``save_pretrained`` folders with safetensors weights (one file, or shards with
``model.safetensors.index.json``). OUT gets LONG's file layout, config, generation config and
tokenizer, so it loads with ``from_pretrained``, with vLLM and as ``k15.models.Pretrained``; the
merge reads one of LONG's weight files (and the matching tensors of SHORT) at a time. Prints one
JSON line: tensors merged and copied, the ratio, the folders.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor
from tqdm import tqdm

INDEX = "model.safetensors.index.json"


def require_same_shapes(long: Mapping[str, list[int]], short: Mapping[str, list[int]]) -> None:
    """Raises ValueError naming the first tensor that is in one model only, or shaped differently."""
    missing = sorted(long.keys() ^ short.keys())
    if missing:
        where = "LONG" if missing[0] in long else "SHORT"
        raise ValueError(f"tensor {missing[0]!r} is only in {where} ({len(missing)} names differ): not the same model")
    for name, shape in long.items():
        if list(shape) != list(short[name]):
            raise ValueError(f"tensor {name!r} has shape {list(shape)} in LONG but {list(short[name])} in SHORT")


def merge(long: Mapping[str, Tensor], short: Mapping[str, Tensor], ratio: float) -> dict[str, Tensor]:
    """ratio · long + (1 − ratio) · short for every floating-point tensor, in long's dtype (the sum
    in at least fp32: ratio 0 and 1 give the inputs exactly, 0.5 the mean); every other tensor is
    long's, which short must equal. Raises ValueError naming a tensor whose name or shape differs."""
    require_same_shapes({n: t.shape for n, t in long.items()}, {n: t.shape for n, t in short.items()})
    merged = {}
    for name, a in long.items():
        b = short[name]
        if not a.is_floating_point():
            if not torch.equal(a, b):
                raise ValueError(f"tensor {name!r} ({a.dtype}) differs between LONG and SHORT and is not averaged")
            merged[name] = a
            continue
        wide = torch.promote_types(a.dtype, torch.float32)
        merged[name] = (ratio * a.to(wide) + (1 - ratio) * b.to(wide)).to(a.dtype)
    return merged


def tensor_files(folder: Path) -> dict[str, str]:
    """Each tensor's name → the safetensors file of ``folder`` that holds it."""
    if (folder / INDEX).is_file():
        return json.loads((folder / INDEX).read_text())["weight_map"]
    if (folder / "model.safetensors").is_file():
        with safe_open(folder / "model.safetensors", "pt") as weights:
            return dict.fromkeys(weights.keys(), "model.safetensors")
    raise FileNotFoundError(f"{folder}: no model.safetensors or {INDEX} (a save_pretrained folder is expected)")


def shapes(folder: Path, files: Mapping[str, str]) -> dict[str, list[int]]:
    """Each tensor's shape, read from the safetensors headers (no weights loaded)."""
    found = {}
    for file in sorted(set(files.values())):
        with safe_open(folder / file, "pt") as weights:
            found |= {name: weights.get_slice(name).get_shape() for name in weights.keys()}
    return found


def load(folder: Path, files: Mapping[str, str], names: list[str]) -> dict[str, Tensor]:
    tensors = {}
    for file in sorted({files[name] for name in names}):
        with safe_open(folder / file, "pt") as weights:
            tensors |= {name: weights.get_tensor(name) for name in names if files[name] == file}
    return tensors


def merge_folders(long: Path, short: Path, ratio: float, out: Path) -> dict:
    """Write the merge of ``long`` and ``short`` to ``out``; returns the report."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"--ratio {ratio}: a weight between 0 (SHORT) and 1 (LONG) is expected")
    if out.resolve() in (long.resolve(), short.resolve()):
        raise ValueError(f"--out {out}: would overwrite an input folder")
    long_files, short_files = tensor_files(long), tensor_files(short)
    require_same_shapes(shapes(long, long_files), shapes(short, short_files))  # before anything is written
    out.mkdir(parents=True, exist_ok=True)
    for path in long.iterdir():  # config, generation config, tokenizer, the shard index: LONG's
        if path.is_file() and path.suffix != ".safetensors":
            shutil.copy2(path, out / path.name)
    merged = copied = 0
    for file in tqdm(sorted(set(long_files.values())), desc="merge", unit="file", file=sys.stderr):
        names = [name for name, where in long_files.items() if where == file]
        a = load(long, long_files, names)
        result = merge(a, load(short, short_files, names), ratio)
        save_file(result, out / file, metadata={"format": "pt"})  # the metadata transformers checks for
        merged += sum(t.is_floating_point() for t in a.values())
        copied += sum(not t.is_floating_point() for t in a.values())
    return {"tensors_merged": merged, "tensors_copied": copied, "ratio": ratio, "long": str(long), "short": str(short)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("long", type=Path, help="the long-CoT model's save_pretrained folder")
    parser.add_argument("short", type=Path, help="the short-CoT model's folder (same architecture and vocabulary)")
    parser.add_argument("--ratio", type=float, default=0.5, help="LONG's weight in [0, 1]; SHORT gets 1 − ratio")
    parser.add_argument("--out", type=Path, required=True, help="the merged model's folder (created)")
    args = parser.parse_args()
    try:
        report = merge_folders(args.long, args.short, args.ratio, args.out)
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(f"merge: {error}") from None
    print(json.dumps(report | {"out": str(args.out)}))


if __name__ == "__main__":
    main()
