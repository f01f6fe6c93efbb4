import math
from fractions import Fraction

n = int(input())
mean = Fraction(sum(map(int, input().split())), n)
print(math.floor(mean + Fraction(1, 2)))
