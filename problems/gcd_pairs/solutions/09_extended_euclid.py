def extended(a, b):
    """(g, x, y) with a*x + b*y = g = gcd(a, b)."""
    if b == 0:
        return a, 1, 0
    g, x, y = extended(b, a % b)
    return g, y, x - (a // b) * y


lines = [input() for _ in range(int(input()))]
for line in lines:
    a, b = map(int, line.split())
    print(extended(a, b)[0])
