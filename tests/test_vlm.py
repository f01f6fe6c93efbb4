"""Image + text prompts: the tiny VLM, the processor path, and images through engine and update."""

import itertools
import json
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from k15_cli import CONF, ROOT, k15, scalars

from k15.data.encode import concat_model_inputs, encode_prompt
from k15.data.prompts import prompt_batch
from k15.data.shards import read_records, shard_urls
from k15.logprobs import token_logprobs
from k15.models import Pretrained, TinyVLM
from k15.rollout import HFEngine, Request, Sampling
from k15.rollout.batch import Rollout
from k15.rollout.vllm import VLLMEngine

ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyzAHMS?.:+=, "
VISION = ROOT / "shards/vision"
SMALL_VLM = dict(
    vision_hidden_size=32,
    vision_layers=1,
    hidden_size=64,
    num_layers=2,
    num_heads=2,
    num_kv_heads=1,
    intermediate_size=128,
)


@pytest.fixture(scope="module")
def vlm():
    source = TinyVLM(ALPHABET, **SMALL_VLM)
    return source.model().eval(), source.tokenizer(), source.processor()


@pytest.fixture(scope="module")
def records() -> list[dict]:
    return list(itertools.islice(read_records(shard_urls(str(VISION / "heldout-000000.tar.gz"))), 6))


def test_saved_vlm_reloads_as_the_same_model_processor_and_tokenizer(vlm, records, tmp_path):
    model, tokenizer, processor = vlm
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    source = Pretrained(str(tmp_path))
    reloaded = source.model().eval()
    text = "How many circles? A:3"  # spaces survive the round trip (a qwen2 text folder would drop them)
    assert source.tokenizer()(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True) == text
    original, again = (
        encode_prompt(records[0]["prompt"], records[0]["images"], tokenizer, p) for p in (processor, source.processor())
    )
    assert original.token_ids == again.token_ids
    torch.testing.assert_close(original.model_inputs["pixel_values"], again.model_inputs["pixel_values"])
    ids = torch.tensor([original.token_ids])
    torch.testing.assert_close(
        token_logprobs(reloaded, ids, torch.ones_like(ids), **again.model_inputs),
        token_logprobs(model, ids, torch.ones_like(ids), **original.model_inputs),
    )


def test_image_prompt_expands_to_one_token_per_patch(vlm, records):
    _, tokenizer, processor = vlm
    record = records[0]
    encoded = encode_prompt(record["prompt"], record["images"], tokenizer, processor)
    image_token = tokenizer.convert_tokens_to_ids("<image>")
    assert encoded.token_ids.count(image_token) == (64 // 8) ** 2
    assert (
        encoded.token_ids[-len(record["prompt"]) :]
        == tokenizer(record["prompt"], add_special_tokens=False)["input_ids"]
    )
    assert encoded.model_inputs["pixel_values"].shape == (1, 3, 64, 64)
    text = encode_prompt("Q:1+2=", [], tokenizer, processor)
    assert text.model_inputs == {} and image_token not in text.token_ids
    with pytest.raises(ValueError, match="no image processor"):
        encode_prompt(record["prompt"], record["images"], tokenizer, None)


@given(st.lists(st.integers(0, 3), min_size=1, max_size=6))
def test_concatenated_inputs_keep_row_order_and_skip_text_rows(images_per_row):
    rows = [{"pixel_values": torch.full((n, 2), float(i))} if n else {} for i, n in enumerate(images_per_row)]
    batched = concat_model_inputs(rows)
    expected = [float(i) for i, n in enumerate(images_per_row) for _ in range(n)]
    assert (batched["pixel_values"][:, 0].tolist() if batched else []) == expected


def test_the_image_changes_the_policy_and_batching_does_not(vlm, records):
    """Same question, different image → different log-probs; a row's log-probs are the same
    alone or in a batch with other images (pixel_values line up with their rows)."""
    model, tokenizer, processor = vlm
    other_image = {**records[0], "images": records[1]["images"]}
    assert other_image["images"] != records[0]["images"]
    batch = prompt_batch([records[0], other_image, *records[1:]], tokenizer, processor)
    rows = list(range(len(batch)))
    width = max(len(batch.prompt_ids[i]) for i in rows)
    ids = torch.tensor(
        [batch.prompt_ids[i] + [tokenizer.pad_token_id] * (width - len(batch.prompt_ids[i])) for i in rows]
    )
    mask = (torch.arange(width)[None] < torch.tensor([len(batch.prompt_ids[i]) for i in rows])[:, None]).long()
    together = token_logprobs(model, ids, mask, **concat_model_inputs([batch.model_inputs[i] for i in rows]))
    for n, i in enumerate(rows):
        length = len(batch.prompt_ids[i])
        alone = token_logprobs(model, ids[n : n + 1, :length], mask[n : n + 1, :length], **batch.model_inputs[i])
        torch.testing.assert_close(together[n : n + 1, :length], alone, atol=1e-5, rtol=1e-5)
    length = len(batch.prompt_ids[0])
    assert not torch.allclose(together[0, :length], together[1, :length])


def test_hf_engine_samples_image_prompts_and_rollout_rows_keep_their_images(vlm, records):
    model, tokenizer, processor = vlm
    batch = prompt_batch(records, tokenizer, processor)
    engine = HFEngine()
    engine.sync(model)
    requests = [
        Request(ids, 2, 6, images, inputs)
        for ids, images, inputs in zip(batch.prompt_ids, batch.images, batch.model_inputs, strict=True)
    ]
    together = engine.sample(requests, Sampling(temperature=0.0))
    alone = [engine.sample([r], Sampling(temperature=0.0))[0] for r in requests]
    assert [[c.token_ids for c in g] for g in together] == [[c.token_ids for c in g] for g in alone]
    rows = [{"pixel_values": torch.full((1, 3, 2, 2), float(n))} for n in range(4)]
    rollout = Rollout(*([None] * 11), model_inputs=rows)
    assert rollout.inputs_for(torch.tensor([2, 0]))["pixel_values"][:, 0, 0, 0].tolist() == [2.0, 0.0]


def test_vllm_engine_refuses_image_prompts_with_what_to_use():
    with pytest.raises(ValueError, match="HFEngine"):
        VLLMEngine(dtype="float32").sample([Request([1, 2], images=[b"png"])], Sampling())


@pytest.mark.slow
def test_tiny_vlm_recipe_runs_sft_then_rl_through_the_cli(tmp_path):
    """Both stages of the tiny VLM recipe, shrunk: images shard → data module → engine → update."""
    shards = [
        f"--data.init_args.train_shards={VISION}/train-000000.tar.gz",
        f"--data.init_args.heldout_shards={VISION}/heldout-000000.tar.gz",
        "--data.init_args.heldout_prompts=8",
        "--data.init_args.heldout_prompts_per_batch=4",
    ]
    small = [f"--model.init_args.model.init_args.{key}={value}" for key, value in SMALL_VLM.items()]
    k15(
        "fit",
        "-c",
        str(CONF / "tiny_vlm_sft.yaml"),
        *shards,
        *small,
        "--data.init_args.steps=3",
        "--data.init_args.examples_per_step=8",
        "--trainer.val_check_interval=3",
        cwd=tmp_path,
    )
    k15(
        "fit",
        "-c",
        str(CONF / "tiny_vlm.yaml"),
        *shards,
        "--data.init_args.iterations=2",
        "--trainer.val_check_interval=2",
        "--data.init_args.prompts_per_iteration=4",
        "--model.init_args.rollout.init_args.samples_per_prompt=2",
        cwd=tmp_path,
    )
    logged = scalars(tmp_path / "runs/tiny_vlm/version_0")
    assert [s.step for s in logged["rollout/reward"]] == [0, 1]
    assert len(logged["heldout/accuracy"]) == 2 and "train/loss" in logged and "data/success_mean" in logged
    summary = json.loads((tmp_path / "runs/tiny_vlm/version_0/summary.json").read_text())
    assert summary["steps"] == 2
    exported = Pretrained(str(tmp_path / "runs/tiny_vlm/hf"))
    assert exported.processor() is not None and type(exported.model()).__name__ == "LlavaForConditionalGeneration"


def test_text_model_folder_has_no_processor(tiny_dir):
    assert Pretrained(str(tiny_dir)).processor() is None
    assert not Path(tiny_dir, "processor_config.json").exists()


def test_the_image_placeholder_is_never_sampled_by_a_vision_policy(tiny_dir):
    from k15.language_module import LanguageModule

    vision = LanguageModule(TinyVLM(ALPHABET, **SMALL_VLM))
    assert vision.unsampled_token_ids == (vision.tokenizer.convert_tokens_to_ids("<image>"),)
    assert LanguageModule(Pretrained(str(tiny_dir))).unsampled_token_ids == ()
