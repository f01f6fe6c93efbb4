from collections import Counter


def factor(n):
    found, p = Counter(), 2
    while p * p <= n:
        while n % p == 0:
            found[p] += 1
            n //= p
        p += 1
    if n > 1:
        found[n] += 1
    return found


for _ in range(int(input())):
    a, b = map(int, input().split())
    common = factor(a) & factor(b)  # Counter & keeps the smaller exponent of each prime
    result = 1
    for prime, power in common.items():
        result *= prime**power
    print(result)
