"""Write labelled judging shards for the reward models (k15/data/judging.py), no model needed.

    python tools/make_rm_shards.py --out shards/rm --train 6000 --heldout 600

Each record is an addition question, its reference answer, a response and the rule verifier's
label (``FinalAnswerMatch("A:")``). Responses come in five kinds, mixed so that about half are
correct:

    teacher     the imperfect teacher's trace (k15/data/arithmetic.py): right, or wrong by a
                dropped carry that only checking the answer reveals                      50%
    near_miss   a correct trace whose final answer has a slip: a digit off by one, an
                extra digit, or its last digit dropped                                  15%
    guess       a correct trace ending in a random answer of the same length            15%
    truncated   a teacher trace cut before its answer (no ``A:``)                        8%
    bare        just ``A:<right answer>``, no working                                   12%

Guesses differ from the reference in most digits: they make "this digit differs" a common
training signal (the GenRM's worked verdicts compare digit by digit, k15/reward/judge_prompt.py), while
near misses and the teacher's slips are the hard cases. Near misses include answers of the wrong
length because the tiny SFT policy writes them (``A:101`` for 10): a GenRM trained without them
accepted 16 of 256 policy responses that the rule rejects, all answers with a digit too many.

Held-out questions are drawn with another seed and none of them is a training question.
"""

from __future__ import annotations

import argparse
import random
from collections import Counter

from k15.data.arithmetic import (
    ANSWER_MARKER,
    MAX_DIFFICULTY,
    Problem,
    sample_problem,
    teacher_solution,
    worked_solution,
)
from k15.data.shards import write_shards
from k15.reward.answer import FinalAnswerMatch
from k15.reward.judge_prompt import judging_prompt, worked_verdict

KINDS = {"teacher": 0.50, "near_miss": 0.15, "guess": 0.15, "truncated": 0.08, "bare": 0.12}
VERIFIER = FinalAnswerMatch(ANSWER_MARKER)


def near_miss(answer: str, rng: random.Random) -> str:
    """``answer`` with one slip, always different from it: a digit moved by ±1 (a leading 1 may
    drop to 0 and vanish) in 4 of 6 cases, an extra digit at the end or the last digit dropped in 1 each."""
    slip = rng.choices(("digit", "extra", "drop"), weights=(4, 1, 1))[0]
    if slip == "extra":
        return answer + str(rng.randint(0, 9))
    if slip == "drop" and len(answer) > 1:
        return answer[:-1]
    digits = list(answer)
    i = rng.randrange(len(digits))
    digits[i] = str((int(digits[i]) + rng.choice((-1, 1))) % 10)
    return str(int("".join(digits)))


def guess(answer: str, rng: random.Random) -> str:
    """A random number with as many digits as ``answer``, never ``answer`` itself."""
    while True:
        low = 0 if len(answer) == 1 else 10 ** (len(answer) - 1)
        number = str(rng.randint(low, 10 ** len(answer) - 1))
        if number != answer:
            return number


def response(problem: Problem, kind: str, rng: random.Random) -> str:
    if kind == "teacher":
        return teacher_solution(problem, rng)[0]
    if kind in ("near_miss", "guess"):
        trace = worked_solution(problem).rpartition(ANSWER_MARKER)[0]
        return trace + ANSWER_MARKER + (near_miss if kind == "near_miss" else guess)(problem.answer, rng)
    if kind == "truncated":
        trace = teacher_solution(problem, rng)[0].rpartition(ANSWER_MARKER)[0]
        return trace[: rng.randint(0, len(trace))]
    return ANSWER_MARKER + problem.answer


def judging_records(count: int, seed: int, exclude: set[str]) -> list[dict]:
    """``count`` records over distinct questions, none in ``exclude``."""
    rng, out, seen = random.Random(seed), [], set(exclude)
    while len(out) < count:
        problem = sample_problem(rng, rng.randint(1, MAX_DIFFICULTY))
        if problem.prompt in seen:
            continue
        seen.add(problem.prompt)
        kind = rng.choices(list(KINDS), weights=list(KINDS.values()))[0]
        text = response(problem, kind, rng)
        verdict = VERIFIER.judge(problem.prompt, text, problem.answer)
        out.append(
            {
                "question": problem.prompt,
                "reference": problem.answer,
                "response": text,
                "correct": verdict.correct,
                "reason": verdict.reason,
                "kind": kind,
                "difficulty": problem.difficulty,
                # the same record as a GenRM SFT example (k15.data.sft)
                "prompt": judging_prompt(problem.prompt, problem.answer, text),
                "solution": worked_verdict(text, problem.answer, verdict.correct),
                "answer": "true" if verdict.correct else "false",
                "domain": "judging",
                "source": "k15.synthetic.addition_judging",
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="shards/rm")
    parser.add_argument("--train", type=int, default=6000, help="training records")
    parser.add_argument("--heldout", type=int, default=600, help="held-out records")
    parser.add_argument("--records-per-shard", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    heldout = judging_records(args.heldout, seed=args.seed + 1, exclude=set())
    train = judging_records(args.train, seed=args.seed, exclude={r["question"] for r in heldout})
    n_train = write_shards(train, f"{args.out}/train-%06d.tar.gz", records_per_shard=args.records_per_shard)
    n_heldout = write_shards(heldout, f"{args.out}/heldout-%06d.tar.gz", records_per_shard=args.records_per_shard)
    for name, records in (("train", train), ("heldout", heldout)):
        kinds = Counter(r["kind"] for r in records)
        print(
            f"{name}: {len(records)} records, {sum(r['correct'] for r in records) / len(records):.1%} correct, kinds "
            f"{dict(kinds)}"
        )
    print(f"wrote {n_train} train and {n_heldout} held-out judging records to {args.out}/")


if __name__ == "__main__":
    main()
