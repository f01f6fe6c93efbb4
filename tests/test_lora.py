"""LoRA and QLoRA (k15/lora.py): the adapted model, its merged weights, the engine fed them, the export."""

import json
import os
import subprocess
import sys

import pytest
import torch
from k15_cli import CONF, ROOT, k15, scalars
from peft import PeftModel
from test_vllm import assert_engine_matches_policy
from transformers import AutoModelForCausalLM

from k15.lora import LoRA, lora_layers, merged_weights, packed_weight_names
from k15.models import Pretrained
from k15.rollout.vllm import VLLMEngine
from k15.rollout.weights import engine_weights


def adapted(tiny_dir, quantize_base: bool, seed: int = 0):
    """The tiny model with adapters whose B is random (at B = 0 the merge would be the base alone)."""
    model = Pretrained(str(tiny_dir)).model()
    LoRA(rank=4, alpha=8, quantize_base=quantize_base).apply(model, torch.device("cpu"))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
    return model


def plain(tiny_dir, state: dict):
    model = Pretrained(str(tiny_dir)).model()
    model.load_state_dict(state)
    return model.eval()


@pytest.mark.parametrize("quantize_base", [True, False], ids=["qlora", "lora"])
def test_only_the_adapters_train_and_the_merge_computes_what_the_adapted_model_does(tiny_dir, quantize_base):
    model = adapted(tiny_dir, quantize_base)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all(".lora_A." in n or ".lora_B." in n for n in trained)
    assert len(lora_layers(model)) == 7 * model.config.num_hidden_layers
    assert bool(packed_weight_names(model)) == quantize_base

    merged = plain(tiny_dir, dict(merged_weights(model, model.state_dict().items())))
    ids = torch.tensor([[1, 5, 9, 7, 12, 6, 8, 4, 10]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, model.eval()(ids).logits, atol=1e-5, rtol=0)
        if quantize_base:  # the 4-bit base is not the original model: NF4 moved it
            original = Pretrained(str(tiny_dir)).model().eval()
            assert (original(ids).logits - merged(ids).logits).abs().max() > 1e-3


def test_packed_codes_keep_their_bits_when_the_engine_dtype_differs(tiny_dir):
    """The engine in bf16 over an fp32 model: the 4-bit codes (stored as fp32) must not be cast,
    else dequantizing them gives garbage; the merged weights come out in bf16, close to fp32's."""
    model = adapted(tiny_dir, quantize_base=True)
    exact = dict(engine_weights(model, 1 << 20, torch.float32))
    halved = dict(engine_weights(model, 1 << 20, torch.bfloat16))
    assert exact.keys() == halved.keys() == Pretrained(str(tiny_dir)).model().state_dict().keys()
    for name, tensor in halved.items():
        assert tensor.dtype == torch.bfloat16
        torch.testing.assert_close(tensor.float(), exact[name], atol=0.02, rtol=0.02)


def test_a_model_without_the_target_layers_is_a_config_error(tiny_dir):
    model = Pretrained(str(tiny_dir)).model()
    with pytest.raises(ValueError, match=r"model\.lora\.target_modules.*c_attn"):
        LoRA(target_modules=["q_proj", "c_attn"]).apply(model, torch.device("cpu"))


def test_held_out_evaluation_does_not_break_the_next_update(tiny_dir):
    """bitsandbytes repacks a CPU layer's 4-bit codes on an eval-mode no-grad forward unless told
    not to; the training forward after it must still compute the same function."""
    model = adapted(tiny_dir, quantize_base=True)
    ids = torch.tensor([[1, 5, 9, 7, 12, 6]])
    before = model.train()(ids).logits.detach()
    with torch.no_grad():
        model.eval()(ids)
    torch.testing.assert_close(model.train()(ids).logits, before)


@pytest.mark.vllm
def test_the_engine_after_a_sync_equals_the_merged_model_before_and_after_an_update(tiny_dir, alphabet):
    model = adapted(tiny_dir, quantize_base=True)
    tok = Pretrained(str(tiny_dir)).tokenizer()
    prompts = [tok(p)["input_ids"] for p in ("Q:65+57=", "Q:123+456=", "Q:7+8=")]
    engine = VLLMEngine(max_model_len=128, kv_cache_gib=0.05)
    engine.sync(model)
    assert_engine_matches_policy(engine, model, prompts)

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-2)
    ids = torch.tensor([prompts[0] + [5, 6, 7]])
    model.train()(ids).logits.log_softmax(-1).sum().backward()
    optimizer.step()
    engine.sync(model)
    assert_engine_matches_policy(engine, model.eval(), prompts)


def test_export_is_a_merged_model_and_a_peft_adapter(tiny_dir, tmp_path):
    from k15.export import save_adapter
    from k15.lora import adapter_state

    model = adapted(tiny_dir, quantize_base=False)
    lora = LoRA(rank=4, alpha=8, quantize_base=False)
    save_adapter(model, lora.peft_config(), adapter_state(model, model.state_dict()), str(tmp_path / "adapter"))
    base = AutoModelForCausalLM.from_pretrained(tiny_dir)
    loaded = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    ids = torch.tensor([[1, 5, 9, 7, 12, 6]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model.eval()(ids).logits, atol=1e-5, rtol=0)


@pytest.mark.gpu
def test_qlora_on_a_gpu_trains_in_bf16_and_merges_exactly(tiny_dir):
    """The CUDA path the CPU cannot take: a bf16 base quantized on the GPU (bitsandbytes' CUDA
    kernels, the quantization state on the device), fp32 adapters, one AdamW step, and the merged
    bf16 weights computing what the adapted model does."""
    model = Pretrained(str(tiny_dir), dtype="bfloat16").model().cuda()
    LoRA(rank=4, alpha=8).apply(model, torch.device("cuda"))
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}  # peft upcasts adapters
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.tensor([[1, 5, 9, 7, 12, 6, 8, 4, 10]], device="cuda")
    model.train()(ids).logits.float().log_softmax(-1).mean().backward()
    optimizer.step()
    merged = Pretrained(str(tiny_dir), dtype="bfloat16").model().cuda()
    merged.load_state_dict(dict(engine_weights(model, 1 << 20, torch.bfloat16)))
    with torch.no_grad():
        torch.testing.assert_close(merged.eval()(ids).logits, model.eval()(ids).logits, atol=0.05, rtol=0.02)


# ---- QLoRA RL through the CLI ------------------------------------------------------------------------------------

QLORA = ["-c", str(CONF / "qlora.yaml"), "--model.init_args.optimizer.init_args.lr=3e-4"]
EASY = [
    "--data.init_args.train_shards=easy/train-*.tar.gz",
    "--data.init_args.heldout_shards=easy/heldout-*.tar.gz",
    "--data.init_args.heldout_prompts=100",
]


@pytest.fixture(scope="module")
def easy_sft(tmp_path_factory):
    """The SFT stage on 1–2 digit additions, long enough that RL has a policy to improve (~70 s; ~90% held-out)."""
    cwd = tmp_path_factory.mktemp("qlora")
    make_shards = [sys.executable, str(ROOT / "tools/make_shards.py"), "--out", "easy", "--max-difficulty", "2"]
    subprocess.run([*make_shards, "--train", "4000", "--heldout", "100"], cwd=cwd, check=True, capture_output=True)
    k15("fit", "-c", str(CONF / "tiny_sft.yaml"), *EASY, "--data.init_args.steps=300", cwd=cwd)
    return cwd


def rl_summary(cwd, name: str) -> dict:
    return json.loads((cwd / f"runs/{name}/version_0/summary.json").read_text())


@pytest.mark.slow
@pytest.mark.vllm
def test_qlora_rl_raises_held_out_accuracy_and_exports_what_it_trained(easy_sft):
    """conf/tiny.yaml + conf/qlora.yaml: the k1.5 loss trains the adapters over the NF4 base, the
    engine samples the merged weights (its log-probs are the trainer's), held-out accuracy rises,
    and the export is the merged model: what the checkpoint's adapters over the NF4 base compute."""
    k15(
        "fit", "-c", str(CONF / "tiny.yaml"), *QLORA, *EASY,
        "--data.init_args.iterations=6", "--trainer.val_check_interval=6",
        "--trainer.logger.init_args.name=qlora",
        "--trainer.callbacks=[{class_path: lightning.pytorch.callbacks.ModelCheckpoint, init_args: {save_last: true}}, "
        "{class_path: k15.export.ExportPretrained, init_args: {dirpath: runs/qlora/hf}}, k15.summary.RunSummary]",
        cwd=easy_sft,
    )  # fmt: skip
    summary = rl_summary(easy_sft, "qlora")
    assert summary["heldout_acc_after"] > summary["heldout_acc_before"], summary
    logged = scalars(easy_sft / "runs/qlora/version_0")
    assert all(s.value <= 1e-4 for s in logged["rollout/engine_logp_abs_diff"])

    trained = adapted_from_checkpoint(
        easy_sft / "runs/tiny_sft/hf", easy_sft / "runs/qlora/version_0/checkpoints/last.ckpt"
    )
    exported = AutoModelForCausalLM.from_pretrained(easy_sft / "runs/qlora/hf").eval()
    ids = torch.tensor([[1, 5, 9, 7, 12, 6, 8, 4, 10]])
    with torch.no_grad():
        # fp32 sums in another order: W̃ + s·BA once, against x·W̃ᵀ + s·(x·Aᵀ)·Bᵀ every forward
        torch.testing.assert_close(exported(ids).logits, trained(ids).logits, atol=1e-4, rtol=0)
    assert (easy_sft / "runs/qlora/hf/adapter/adapter_model.safetensors").is_file()


def adapted_from_checkpoint(base, checkpoint):
    """A fresh QLoRA model over ``base`` with the adapters (and everything else) of a Lightning checkpoint."""
    model = Pretrained(str(base)).model()
    LoRA().apply(model, torch.device("cpu"))
    state = torch.load(checkpoint, weights_only=False, map_location="cpu")["state_dict"]
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
    return model.eval()


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.multiprocess
def test_qlora_trains_under_fsdp2_on_two_processes(easy_sft, master_port):
    """The NF4 codes stored in the model's dtype are sharded by fully_shard like any weight; each
    rank's engine gets merged weights gathered from the shards; held-out accuracy rises."""
    k15(
        "fit", "-c", str(CONF / "tiny.yaml"), "-c", str(CONF / "strategy/fsdp2.yaml"), *QLORA, *EASY,
        "--data.init_args.iterations=4", "--trainer.val_check_interval=4",
        "--data.init_args.prompts_per_iteration=8",
        "--trainer.logger.init_args.name=qlora_fsdp2", "--trainer.callbacks=[k15.summary.RunSummary]",
        cwd=easy_sft, env=os.environ | {"MASTER_PORT": str(master_port)},
    )  # fmt: skip
    summary = rl_summary(easy_sft, "qlora_fsdp2")
    assert summary["heldout_acc_after"] > summary["heldout_acc_before"], summary
    logged = scalars(easy_sft / "runs/qlora_fsdp2/version_0")
    assert len(logged["rollout/engine_logp_abs_diff"]) == 4
    assert all(s.value <= 1e-4 for s in logged["rollout/engine_logp_abs_diff"])
