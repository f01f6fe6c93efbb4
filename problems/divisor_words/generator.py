import random

rng = random.Random(int(input()))
print(rng.randint(1, 30), rng.randint(2, 7), rng.randint(2, 7))
