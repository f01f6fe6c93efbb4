from fractions import Fraction

n = int(input())
print(round(Fraction(sum(map(int, input().split())), n)))
