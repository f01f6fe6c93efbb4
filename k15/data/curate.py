"""Prompt-set curation (k1.5 §2.1) as pure functions; ``tools/curate.py`` runs them on shards.

    duplicates     exact: same normalised prompt, answer and image bytes (SHA-256);
                   near, text-only: MinHash estimate of the Jaccard similarity of the
                   normalised prompts' character n-gram sets ≥ threshold (LSH-banded);
                   near, with images (opt-in): same normalised prompt and answer and
                   the same 8×8 average hash
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

import numpy as np
from PIL import Image

MERSENNE_31 = (1 << 31) - 1
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


class MinHash:
    """Signatures whose agreement estimates the Jaccard similarity J(A, B) = |A ∩ B| / |A ∪ B|.

    Each shingle is hashed to x = BLAKE2b(shingle) mod P, P = 2³¹ − 1 (stable across runs),
    then permuted by num_perm universal hashes h_i(x) = (a_i·x + b_i) mod P, a_i ∈ [1, P),
    b_i ∈ [0, P): a_i·x + b_i < 2⁶², exact in uint64, and a·x wraps P many times, which is
    what makes h_i a random-looking permutation. signature_i = min over the shingles of
    h_i; P(signature_i(A) = signature_i(B)) ≈ J(A, B), so the share of equal entries
    estimates J with standard deviation √(J(1 − J) / num_perm).

    Args:
        num_perm: signature length.
        shingle_chars: n of the character n-grams.
        seed: draws a_i, b_i.
    """

    def __init__(self, num_perm: int = 128, shingle_chars: int = 5, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.a = rng.integers(1, MERSENNE_31, num_perm, dtype=np.uint64)[:, None]
        self.b = rng.integers(0, MERSENNE_31, num_perm, dtype=np.uint64)[:, None]
        self.num_perm, self.shingle_chars = num_perm, shingle_chars

    def __call__(self, text: str) -> np.ndarray:
        """[num_perm] uint64 signature of ``text``'s shingle set."""
        x = np.array(
            [
                int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest()) % MERSENNE_31
                for s in shingles(text, self.shingle_chars)
            ],
            dtype=np.uint64,
        )
        return ((self.a * x + self.b) % np.uint64(MERSENNE_31)).min(axis=1)


def jaccard_estimate(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a == b))


def lsh_bands(num_perm: int, threshold: float, recall: float = 0.999) -> tuple[int, int]:
    """(b bands, r rows per band) for LSH over ``num_perm``-long signatures.

    Two signatures become a candidate pair when all r rows of any band agree, with
    probability 1 − (1 − J^r)^b. This takes the largest r (fewest needless candidates) with
    b = ⌊num_perm / r⌋ for which a pair exactly at ``threshold`` is a candidate with
    probability ≥ ``recall``; more similar pairs are candidates more often still.
    """
    for rows in range(num_perm, 0, -1):
        bands = num_perm // rows
        if 1 - (1 - threshold**rows) ** bands >= recall:
            return bands, rows
    return num_perm, 1


def average_hash(data: bytes) -> int:
    """64-bit average hash: the image as 8×8 grey (box filter); bit k = pixel_k > mean."""
    with Image.open(io.BytesIO(data)) as image:
        grey = np.asarray(image.convert("L").resize((8, 8), Image.Resampling.BOX), float)
    return int.from_bytes(np.packbits(grey.ravel() > grey.mean()).tobytes())


class LSHIndex:
    """Kept signatures, cut into b bands of r rows (``lsh_bands``) and bucketed per band."""

    def __init__(self, num_perm: int, threshold: float):
        self.bands, self.rows = lsh_bands(num_perm, threshold)
        self.threshold = threshold
        self.buckets = [defaultdict(list) for _ in range(self.bands)]
        self.signatures: dict[int, np.ndarray] = {}

    def band_keys(self, signature: np.ndarray) -> list[bytes]:
        r = self.rows
        return [signature[b * r : (b + 1) * r].tobytes() for b in range(self.bands)]

    def similar(self, signature: np.ndarray) -> int | None:
        """The first kept record sharing a band whose estimated Jaccard ≥ threshold."""
        keys = zip(self.buckets, self.band_keys(signature), strict=True)
        candidates = sorted({j for bucket, key in keys for j in bucket.get(key, ())})
        close = (j for j in candidates if self.estimate(signature, j) >= self.threshold)
        return next(close, None)

    def estimate(self, signature: np.ndarray, j: int) -> float:
        return jaccard_estimate(signature, self.signatures[j])

    def add(self, i: int, signature: np.ndarray) -> None:
        self.signatures[i] = signature
        for bucket, key in zip(self.buckets, self.band_keys(signature), strict=True):
            bucket[key].append(i)


def find_duplicates(
    prompts: list[str],
    answers: list[str],
    images: list[list[bytes]],
    threshold: float = 0.9,
    minhash: MinHash | None = None,
    image_near: bool = False,
) -> dict[int, tuple[str, int]]:
    """{index: (``exact_duplicate`` | ``near_duplicate``, index of the record it duplicates)}.

    Records are taken in order and the first occurrence stays. An exact duplicate points at
    the first record with its key (which may itself be a near duplicate, so the count of
    exact duplicates is the data's whatever the near rules); a near duplicate points at
    the first kept record it resembles (only kept records are compared).

    Text-only records are near duplicates at an estimated Jaccard ≥ ``threshold``, whatever
    their answers. Records with images, only with ``image_near``, when their normalised
    prompts and answers match and so does every image's ``average_hash``, bit for bit. That
    simple rule catches re-encoded and resized copies, but also merges distinct images whose
    content is small on a plain background: on shards/vision it takes 214 of the 2492
    records left after exact duplicates, most of them distinct drawn additions with the
    same sum. So it is off by default, and images are then only exact duplicates.
    """
    minhash = minhash or MinHash()
    index = LSHIndex(minhash.num_perm, threshold)
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
            signature = minhash(text)
            original = index.similar(signature)
        elif image_near:
            look = (*key[:2], tuple(average_hash(p) for p in pictures))
            original = perceptual.get(look)
        if original is not None:
            duplicates[i] = ("near_duplicate", original)
            continue
        if not pictures:
            index.add(i, signature)
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
