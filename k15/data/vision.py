"""Procedural image + text tasks in the paper's vision categories, small enough for a tiny VLM.

    count      "How many circles?"                    shapes of several kinds on a grid; answer: a number
    compare    "More circles or squares?"             answer: circle, square or same
    read       an addition problem drawn as text      answer: the sum (the arithmetic task, seen not read)

Shapes sit in distinct cells of a GRID × GRID layout on a SIZE × SIZE canvas, one colour per
kind, so an image can be checked against its answer pixel by pixel. Difficulty (1–5) sets how
many shapes, kinds and digits there are.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

SIZE, GRID = 64, 4
CELL = SIZE // GRID
KINDS = {"circle": (220, 30, 30), "square": (30, 30, 220), "triangle": (30, 160, 30)}


@dataclass
class VisualProblem:
    prompt: str
    answer: str
    difficulty: int
    task: str
    image: Image.Image


def draw_shape(draw: ImageDraw.ImageDraw, kind: str, cell: int) -> None:
    x, y = (cell % GRID) * CELL + 2, (cell // GRID) * CELL + 2
    box, colour = (x, y, x + CELL - 5, y + CELL - 5), KINDS[kind]
    if kind == "circle":
        draw.ellipse(box, fill=colour)
    elif kind == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([(x, box[3]), (box[2], box[3]), ((x + box[2]) // 2, y)], fill=colour)


def scene(rng: random.Random, counts: dict[str, int]) -> Image.Image:
    image = Image.new("RGB", (SIZE, SIZE), "white")
    draw = ImageDraw.Draw(image)
    cells = rng.sample(range(GRID * GRID), sum(counts.values()))
    kinds = [kind for kind, n in counts.items() for _ in range(n)]
    for kind, cell in zip(kinds, cells, strict=True):
        draw_shape(draw, kind, cell)
    return image


def shape_counts(rng: random.Random, difficulty: int) -> dict[str, int]:
    """1..difficulty+1 shapes of 1..3 kinds (more kinds, more distractors, as difficulty grows)."""
    kinds = list(KINDS)[: min(3, 1 + difficulty // 2)]
    total = rng.randint(1, difficulty + 1)
    counts = dict.fromkeys(kinds, 0)
    for _ in range(total):
        counts[rng.choice(kinds)] += 1
    return counts


def count_problem(rng: random.Random, difficulty: int) -> VisualProblem:
    counts = shape_counts(rng, difficulty)
    kind = rng.choice(list(counts))
    return VisualProblem(f"How many {kind}s?", str(counts[kind]), difficulty, "count", scene(rng, counts))


def compare_problem(rng: random.Random, difficulty: int) -> VisualProblem:
    counts = {"circle": rng.randint(0, difficulty + 1), "square": rng.randint(0, difficulty + 1)}
    if not any(counts.values()):
        counts["circle"] = 1
    answer = "same" if counts["circle"] == counts["square"] else max(counts, key=counts.get)
    return VisualProblem("More circles or squares?", answer, difficulty, "compare", scene(rng, counts))


def read_problem(rng: random.Random, difficulty: int) -> VisualProblem:
    a, b = (rng.randint(10 ** (difficulty - 1) if difficulty > 1 else 0, 10**difficulty - 1) for _ in range(2))
    image = Image.new("RGB", (SIZE * 2, SIZE // 2), "white")
    ImageDraw.Draw(image).text((4, 8), f"{a}+{b}=", fill="black")
    return VisualProblem("Solve the problem in the image.", str(a + b), difficulty, "read", image)


TASKS = {"count": count_problem, "compare": compare_problem, "read": read_problem}
