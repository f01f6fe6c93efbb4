def divisors(n):
    d = 1
    while d * d <= n:
        if n % d == 0:
            yield d
            yield n // d
        d += 1


for _ in range(int(input())):
    a, b = map(int, input().split())
    print(max(d for d in divisors(a) if b % d == 0))
