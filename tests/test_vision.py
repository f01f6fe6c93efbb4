"""The synthetic vision tasks: every image agrees with its answer, checked pixel by pixel."""

import random

from hypothesis import given
from hypothesis import strategies as st

from k15.data.vision import CELL, GRID, KINDS, compare_problem, count_problem, read_problem


def shapes_in(image) -> dict[str, int]:
    """How many grid cells hold each kind's colour (a cell holds at most one shape)."""
    counts = dict.fromkeys(KINDS, 0)
    pixels = image.load()
    for cell in range(GRID * GRID):
        x0, y0 = (cell % GRID) * CELL, (cell // GRID) * CELL
        colours = {pixels[x, y] for x in range(x0, x0 + CELL) for y in range(y0, y0 + CELL)}
        for kind, colour in KINDS.items():
            counts[kind] += colour in colours
    return counts


@given(st.integers(0, 2**32 - 1), st.integers(1, 5))
def test_count_answers_match_the_drawn_shapes(seed, difficulty):
    problem = count_problem(random.Random(seed), difficulty)
    kind = problem.prompt.removeprefix("How many ").removesuffix("s?")
    assert shapes_in(problem.image)[kind] == int(problem.answer)
    assert 1 <= sum(shapes_in(problem.image).values()) <= difficulty + 1


@given(st.integers(0, 2**32 - 1), st.integers(1, 5))
def test_compare_answers_match_the_drawn_shapes(seed, difficulty):
    problem = compare_problem(random.Random(seed), difficulty)
    seen = shapes_in(problem.image)
    expected = "same" if seen["circle"] == seen["square"] else max(("circle", "square"), key=seen.get)
    assert problem.answer == expected


@given(st.integers(0, 2**32 - 1), st.integers(1, 5))
def test_read_problems_draw_text_and_answer_the_sum(seed, difficulty):
    problem = read_problem(random.Random(seed), difficulty)
    dark = sum(1 for p in problem.image.getdata() if sum(p) < 200)
    # every one of the 2d + 2 characters of "a+b=" is really drawn: the thinnest ("1") has ~7 dark
    # pixels (20·d, the bound before, failed for d = 5 on operands made mostly of 1s and 0s)
    assert dark > 6 * (2 * difficulty + 2)
    assert int(problem.answer) < 2 * 10**difficulty


def test_shipped_vision_shards_load_with_one_image_each():
    from pathlib import Path

    from k15.data.pool import load_pool
    from k15.data.shards import shard_urls

    shards = Path(__file__).resolve().parents[1] / "shards" / "vision"
    pool = load_pool(shard_urls(str(shards / "train-*.tar.gz")))
    assert len(pool) == 3000 and not pool.skipped
    assert all(len(images) == 1 for images in pool.images)
    assert set(pool.difficulties) == {1, 2, 3, 4, 5}
    seen = set(zip(pool.prompts, (images[0] for images in pool.images), strict=True))
    assert len(seen) == len(pool)  # no repeats
    heldout = load_pool(shard_urls(str(shards / "heldout-*.tar.gz")))
    assert not seen & set(zip(heldout.prompts, (images[0] for images in heldout.images), strict=True))  # held out
