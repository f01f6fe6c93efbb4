def gcd(a, b):
    shift = 0
    while (a | b) & 1 == 0:
        a, b, shift = a >> 1, b >> 1, shift + 1
    while a & 1 == 0:
        a >>= 1
    while b:
        while b & 1 == 0:
            b >>= 1
        if a > b:
            a, b = b, a
        b -= a
    return a << shift


for _ in range(int(input())):
    a, b = map(int, input().split())
    print(gcd(a, b))
