import random

rng = random.Random(int(input()))
n = rng.choice([1, 2, 2, 4, 4, 6, 8, 10, rng.randint(1, 10)])  # even n: means ending in .5 are common
print(n)
print(*(rng.randint(0, 100) for _ in range(n)))
