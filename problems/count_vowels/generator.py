import random
import string

rng = random.Random(int(input()))
length = rng.randint(1, 60)
alphabet = string.ascii_lowercase + "aeiou  "  # more vowels and spaces than chance gives
line = "".join(rng.choice(alphabet) for _ in range(length))
if not line.strip():
    line = rng.choice(string.ascii_lowercase) + line[1:]
print(line)
