import random

rng = random.Random(int(input()))
n = rng.randint(1, 20)
high = -1 if rng.random() < 0.2 else 100  # every number negative now and then: the empty block is not allowed
print(n)
print(*(rng.randint(-100, high) for _ in range(n)))
