import random

rng = random.Random(int(input()))
n = rng.randint(1, 15)
spread = rng.choice([0, 1, 3, 50])  # narrow ranges repeat the maximum, or make every number equal
low = rng.randint(-50, 50 - spread)
print(n)
print(*(rng.randint(low, low + spread) for _ in range(n)))
