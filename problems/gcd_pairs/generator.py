import random

rng = random.Random(int(input()))
q = rng.randint(1, 10)
print(q)
for _ in range(q):
    common = rng.choice([1, 1, 2, 3, 6, 7, 12, 100, rng.randint(1, 1000)])  # shared factors, not just coprime pairs
    print(common * rng.randint(1, 1000000 // common), common * rng.randint(1, 1000000 // common))
