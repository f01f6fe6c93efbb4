import sys

data = list(map(int, sys.stdin.read().split()))
q, pairs = data[0], data[1:]
for k in range(q):
    big, small = max(pairs[2 * k], pairs[2 * k + 1]), min(pairs[2 * k], pairs[2 * k + 1])
    while small:
        _, rest = divmod(big, small)
        big, small = small, rest
    print(big)
