"""tools/merge.py: long2short by weight averaging (k1.5 §2.4), the pure merge and the folders it writes."""

import importlib.util
import json
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from k15_cli import ROOT, exported_weights
from transformers import AutoModelForCausalLM, AutoTokenizer

from k15.data.arithmetic import ALPHABET
from k15.models import TinyQwen2
from k15.rollout.vllm import import_vllm

spec = importlib.util.spec_from_file_location("merge", ROOT / "tools" / "merge.py")
tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tool)

SHAPE = dict(hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=128)  # head_dim 32 for vLLM


def save_tiny(path, seed: int, **shape):
    source = TinyQwen2(ALPHABET, **(SHAPE | shape), seed=seed)
    source.model().save_pretrained(path)
    source.tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    """Two tiny models of one shape with different weights: the "long" and the "short" one."""
    root = tmp_path_factory.mktemp("merge")
    return save_tiny(root / "long", seed=1), save_tiny(root / "short", seed=2)


def run_merge(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "tools/merge.py", *map(str, args)], cwd=ROOT, capture_output=True, text=True)


def states(seed: int, dtype=torch.float32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "w": torch.randn(4, 3, generator=g).to(dtype),
        "b": torch.randn(3, generator=g).to(dtype),
        "steps": torch.tensor([7, 8]),  # an integer buffer: copied, never averaged
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_ratio_one_and_zero_give_the_inputs_and_a_half_gives_the_mean(dtype):
    long, short = states(0, dtype), states(1, dtype)
    for ratio, expected in ((1.0, long), (0.0, short)):
        merged = tool.merge(long, short, ratio)
        assert all(torch.equal(merged[k], expected[k]) and merged[k].dtype == expected[k].dtype for k in long)
    half = tool.merge(long, short, 0.5)
    for name in ("w", "b"):  # the mean in fp32, rounded once to the stored dtype
        assert half[name].dtype == dtype
        assert torch.equal(half[name], ((long[name].float() + short[name].float()) / 2).to(dtype))
    assert torch.equal(half["steps"], long["steps"])


@settings(max_examples=100, deadline=None)
@given(ratio=st.floats(0.0, 1.0), seed=st.integers(0, 1000))
def test_every_merged_weight_lies_between_the_two_models(ratio, seed):
    long, short = states(seed), states(seed + 1)
    merged = tool.merge(long, short, ratio)
    for name in ("w", "b"):
        low, high = torch.minimum(long[name], short[name]), torch.maximum(long[name], short[name])
        assert torch.all((low - 1e-6 <= merged[name]) & (merged[name] <= high + 1e-6))
        torch.testing.assert_close(merged[name], ratio * long[name] + (1 - ratio) * short[name])


def test_mismatched_models_are_refused_naming_the_tensor():
    long = states(0)
    with pytest.raises(ValueError, match=r"'w' has shape \[4, 3\] in LONG but \[3, 3\] in SHORT"):
        tool.merge(long, states(1) | {"w": torch.zeros(3, 3)}, 0.5)
    with pytest.raises(ValueError, match="'extra' is only in SHORT"):
        tool.merge(long, states(1) | {"extra": torch.zeros(1)}, 0.5)
    with pytest.raises(ValueError, match="'steps'.*differs"):
        tool.merge(long, states(1) | {"steps": torch.tensor([7, 9])}, 0.5)


def test_merged_folder_is_the_average_and_loads_with_transformers(two_models, tmp_path):
    long, short = two_models
    result = run_merge(long, short, "--ratio", "0.25", "--out", tmp_path / "merged")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])  # the final JSON line
    a, b = exported_weights(long), exported_weights(short)
    assert report == {
        "tensors_merged": len(a),
        "tensors_copied": 0,
        "ratio": 0.25,
        "long": str(long),
        "short": str(short),
        "out": str(tmp_path / "merged"),
    }
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    loaded = {k: v for k, v in model.state_dict().items() if k in a}
    assert loaded.keys() == a.keys()
    for name, weight in loaded.items():
        assert torch.equal(weight, 0.25 * a[name] + 0.75 * b[name]), name
    for copied in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / "merged" / copied).read_bytes() == (long / copied).read_bytes(), copied
    assert (
        AutoTokenizer.from_pretrained(tmp_path / "merged").get_vocab()
        == AutoTokenizer.from_pretrained(long).get_vocab()
    )
    # ratio 0 through the CLI: SHORT's weights, bit for bit
    assert run_merge(long, short, "--ratio", "0", "--out", tmp_path / "short_again").returncode == 0
    again = exported_weights(tmp_path / "short_again")
    assert all(torch.equal(again[k], b[k]) for k in b)


def test_a_different_shape_is_refused_before_anything_is_written(two_models, tmp_path):
    long, _ = two_models
    wider = save_tiny(tmp_path / "wider", seed=2, intermediate_size=256)
    result = run_merge(long, wider, "--out", tmp_path / "merged")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert (
        "merge: tensor 'model.layers.0.mlp.down_proj.weight' has shape [64, 128] in LONG but [64, 256]" in result.stderr
    )
    assert not (tmp_path / "merged").exists()
    for args, message in (
        (["--ratio", "1.5", "--out", tmp_path / "merged"], "--ratio 1.5"),
        (["--out", long], "would overwrite"),
    ):
        result = run_merge(long, wider, *args)
        assert result.returncode != 0 and message in result.stderr, result.stderr
    result = run_merge(long, tmp_path, "--out", tmp_path / "merged")  # no weights there
    assert result.returncode != 0 and "no model.safetensors" in result.stderr


@pytest.mark.vllm
@pytest.mark.slow
def test_merged_folder_loads_in_vllm_with_the_merged_weights(two_models, tmp_path):
    """vLLM reads the merged weights from disk (not from a config): its greedy tokens are the HF model's."""
    vllm = import_vllm()  # the engine core in this process, as k15's engine runs it
    long, short = two_models
    assert run_merge(long, short, "--ratio", "0.5", "--out", tmp_path / "merged").returncode == 0
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
    prompts = [tokenizer(p)["input_ids"] for p in ("Q:65+57=", "Q:123+456=")]
    llm = vllm.LLM(
        model=str(tmp_path / "merged"),
        dtype="float32",
        max_model_len=64,
        kv_cache_memory_bytes=2**24,
        enforce_eager=True,
        skip_tokenizer_init=True,
    )
    params = vllm.SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True, detokenize=False)
    ours = [list(o.outputs[0].token_ids) for o in llm.generate([{"prompt_token_ids": p} for p in prompts], params)]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    for prompt, tokens in zip(prompts, ours, strict=True):
        ids = torch.tensor([prompt])
        with torch.no_grad():
            for _ in range(12):  # greedy, through <eos> as vLLM is told to
                ids = torch.cat([ids, model(ids).logits[:, -1:].argmax(-1)], dim=1)
        assert tokens == ids[0, len(prompt) :].tolist()
