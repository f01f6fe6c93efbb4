import random

rng = random.Random(int(input()))
letters = rng.choice(["ab", "abc", "xyz", "abcdefghij"])  # few letters: long runs
length = rng.randint(1, 40)
line = ""
while len(line) < length:
    line += rng.choice(letters) * rng.randint(1, 6)
print(line[:length])
