"""Prompt-set curation (k1.5 §2.1) as pure functions; ``tools/curate.py`` runs them on shards.

    duplicates     exact: same normalised prompt, answer and image bytes (SHA-256);
                   near, text-only: MinHash estimate of the Jaccard similarity of the
                   normalised prompts' character n-gram sets ≥ threshold (LSH-banded;
                   datasketch's MinHash and MinHashLSH);
                   near, with images (opt-in): same normalised prompt and answer and
                   the same 8×8 average hash (imagehash's)
    evaluability   multiple choice, true/false and proof questions are dropped: easy to
                   guess, or hard to check
    difficulty     from the model's own pass rate p over n samples: d = 5 − round(4p)

``normalise(t)`` = casefold, whitespace runs collapsed to one space, ends stripped.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections import defaultdict

import imagehash
from datasketch import MinHash, MinHashLSH
from PIL import Image

NUM_PERM = 128  # signature length: the estimate's standard deviation is √(J(1 − J) / 128), 0.027 at J = 0.9
UNEVALUABLE_KINDS = ("multiple_choice", "true_false", "proof")
TRUE_FALSE_ANSWERS = {"true", "false", "yes", "no"}
# "(A) … (B) …" anywhere, or "A. …" / "A) …" opening a line; upper case only, so
# the sub-questions "(a) … (b) …" of a multi-part problem do not count
OPTION = re.compile(r"\(([A-E])\)|^[ \t]*([A-E])[.)]\s", re.MULTILINE)
PROOF = re.compile(r"\b(prove|show that|demonstrate that)\b")


def normalise(text: str) -> str:
    return " ".join(text.casefold().split())


def image_digest(images: list[bytes]) -> str:
    """SHA-256 over the images' bytes, each length-prefixed (so a split cannot collide)."""
    digest = hashlib.sha256()
    for data in images:
        digest.update(len(data).to_bytes(8, "little") + data)
    return digest.hexdigest()


def shingles(text: str, n: int) -> set[str]:
    """The set of character n-grams of ``text``; a text shorter than n is its own one shingle."""
    return {text[i : i + n] for i in range(len(text) - n + 1)} or {text}


def lsh_bands(num_perm: int, threshold: float, recall: float = 0.999) -> tuple[int, int]:
    """(b bands, r rows per band) for LSH over ``num_perm``-long signatures.

    Two signatures become a candidate pair when all r rows of any band agree, with
    probability 1 − (1 − J^r)^b. This takes the largest r (fewest needless candidates) with
    b = ⌊num_perm / r⌋ for which a pair exactly at ``threshold`` is a candidate with
    probability ≥ ``recall``; more similar pairs are candidates more often still.
    (``MinHashLSH``'s own choice weighs false positives and negatives alike: 5 bands of 25
    rows at 0.9, which misses 69% of the pairs at the threshold and 20% at J = 0.95.)
    """
    for rows in range(num_perm, 0, -1):
        bands = num_perm // rows
        if 1 - (1 - threshold**rows) ** bands >= recall:
            return bands, rows
    return num_perm, 1


def average_hash(data: bytes) -> int:
    """imagehash's 64-bit average hash (the image as 8×8 grey; bit k = pixel_k > mean) as an int."""
    with Image.open(io.BytesIO(data)) as image:
        return int(str(imagehash.average_hash(image)), 16)


def find_duplicates(
    prompts: list[str],
    answers: list[str],
    images: list[list[bytes]],
    threshold: float = 0.9,
    shingle_chars: int = 5,
    image_near: bool = False,
) -> dict[int, tuple[str, int]]:
    """{index: (``exact_duplicate`` | ``near_duplicate``, index of the record it duplicates)}.

    Records are taken in order and the first occurrence stays. An exact duplicate points at
    the first record with its key (which may itself be a near duplicate, so the count of
    exact duplicates is the data's whatever the near rules); a near duplicate points at
    the first kept record it resembles (only kept records are compared).

    Text-only records are near duplicates at an estimated Jaccard ≥ ``threshold`` of their
    ``shingle_chars``-gram sets, whatever their answers: ``MinHashLSH`` with ``lsh_bands``
    proposes candidates, the first kept one whose ``MinHash`` estimate reaches the threshold
    is the original. Records with images, only with ``image_near``, when their normalised
    prompts and answers match and so does every image's ``average_hash``, bit for bit. That
    simple rule catches re-encoded and resized copies, but also merges distinct images whose
    content is small on a plain background: on shards/vision it takes 274 of the 3000
    training records (none of them exact duplicates), 210 of them distinct drawn additions
    with the same sum. So it is off by default, and images are then only exact duplicates.
    """
    # seed 1 and SHA-1 shingle hashes: the same text has the same signature on every run and
    # machine; the scheme is named as it decides what is dropped, and datasketch 2.0 changed it
    blank = MinHash(num_perm=NUM_PERM, seed=1, scheme="affine32")
    index = MinHashLSH(num_perm=NUM_PERM, params=lsh_bands(NUM_PERM, threshold))
    kept: dict[int, MinHash] = {}
    exact: dict[tuple, int] = {}
    perceptual: dict[tuple, int] = {}
    duplicates: dict[int, tuple[str, int]] = {}
    for i, (prompt, answer, pictures) in enumerate(zip(prompts, answers, images, strict=True)):
        text = normalise(prompt)
        key = (text, answer.strip(), image_digest(pictures))
        if key in exact:
            duplicates[i] = ("exact_duplicate", exact[key])
            continue
        exact[key] = i
        original = None
        if not pictures:
            minhash = blank.copy()  # shares the permutations: 15x cheaper than a new MinHash
            minhash.update_batch([s.encode() for s in shingles(text, shingle_chars)])
            close = (j for j in sorted(index.query(minhash)) if minhash.jaccard(kept[j]) >= threshold)
            original = next(close, None)
        elif image_near:
            look = (*key[:2], tuple(average_hash(p) for p in pictures))
            original = perceptual.get(look)
        if original is not None:
            duplicates[i] = ("near_duplicate", original)
        elif not pictures:
            kept[i] = minhash
            index.insert(i, minhash, check_duplication=False)
        elif image_near:
            perceptual[look] = i
    return duplicates


def unevaluable_kind(prompt: str, answer: str, kinds: tuple[str, ...] = UNEVALUABLE_KINDS) -> str | None:
    """The first of ``kinds`` the question is, or None when its answer can be checked robustly.

    multiple_choice  the answer is one option letter A–E ("B", "(B)", "b."), or the prompt
                     lists options "(A) … (B) …" / lines opening with "A." and "B."
    true_false       the answer is true, false, yes or no
    proof            the prompt says "prove", "show that" or "demonstrate that"
    """
    letter = normalise(answer).strip("().")
    options = {a or b for a, b in OPTION.findall(prompt)}
    is_letter = len(letter) == 1 and letter in "abcde"
    tests = {
        "multiple_choice": is_letter or {"A", "B"} <= options,
        "true_false": normalise(answer) in TRUE_FALSE_ANSWERS,
        "proof": PROOF.search(normalise(prompt)) is not None,
    }
    return next((kind for kind in kinds if tests[kind]), None)


def closed_set_prompts(prompts: list[str], answers: list[str], max_choices: int) -> set[str]:
    """Normalised prompt texts asked more than K = ``max_choices`` times whose answers take
    at most K values: an unlisted K-way choice, guessable with probability ≥ 1/K (e.g.
    "More circles or squares?": circle / square / same over many images). K = 0: none."""
    seen: dict[str, list[str]] = defaultdict(list)
    for prompt, answer in zip(prompts, answers, strict=True):
        seen[normalise(prompt)].append(answer.strip())
    return {text for text, said in seen.items() if len(said) > max_choices >= len(set(said))}


def difficulty_from_pass_rate(correct: int, samples: int) -> int:
    """d = 5 − round(4p), p = correct / samples, halves rounded up: 1 (p = 1) … 5 (p = 0).

    In integers: 5 − ⌊(8·correct + samples) / (2·samples)⌋. Five equal-width bins of p
    centred on 1, ¾, ½, ¼, 0; with 10 samples: 9–10 correct → 1, 7–8 → 2, 4–6 → 3,
    2–3 → 4, 0–1 → 5.
    """
    return 5 - (8 * correct + samples) // (2 * samples)
