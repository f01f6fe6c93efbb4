import random
import string

rng = random.Random(int(input()))
words = ["".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(1, 8))) for _ in range(rng.randint(1, 10))]
# About one input in four breaks the stated format with a doubled space, where the statement
# does not say what to print: the solutions' outputs split, and test generation drops the input.
gaps = [" "] * (len(words) - 1)
if gaps and rng.random() < 0.25:
    gaps[rng.randrange(len(gaps))] = "  "
print(words[0] + "".join(gap + word for gap, word in zip(gaps, words[1:])))
