from fractions import Fraction

for _ in range(int(input())):
    a, b = map(int, input().split())
    print(b // Fraction(a, b).denominator)
