def gcd(a, b):
    return a if b == 0 else gcd(b, a % b)


q = int(input())
print("\n".join(str(gcd(*map(int, input().split()))) for _ in range(q)))
