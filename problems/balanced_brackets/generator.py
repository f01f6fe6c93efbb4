import random

rng = random.Random(int(input()))
PAIRS = ["()", "[]", "{}"]


def balanced(pairs):
    """A random balanced string of ``pairs`` bracket pairs."""
    if pairs == 0:
        return ""
    inside = rng.randint(0, pairs - 1)
    left, right = rng.choice(PAIRS)
    return left + balanced(inside) + right + balanced(pairs - 1 - inside)


line = balanced(rng.randint(1, 15))
kind = rng.random()
if kind < 0.2:  # swap two characters: often crossed pairs such as ([)]
    i, j = sorted(rng.sample(range(len(line)), 2)) if len(line) > 2 else (0, 1)
    line = line[:i] + line[j] + line[i + 1 : j] + line[i] + line[j + 1 :]
elif kind < 0.4:  # change one bracket
    i = rng.randrange(len(line))
    line = line[:i] + rng.choice("()[]{}") + line[i + 1 :]
elif kind < 0.5:  # cut it short
    line = line[: rng.randint(1, len(line))]
print(line)
