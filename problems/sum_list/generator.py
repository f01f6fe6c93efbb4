import random

rng = random.Random(int(input()))
n = rng.randint(1, 20)
print(n)
print(*(rng.randint(-1000, 1000) for _ in range(n)))
