from decimal import ROUND_HALF_UP, Decimal

n = int(input())
mean = Decimal(sum(map(int, input().split()))) / Decimal(n)
print(mean.quantize(Decimal(1), rounding=ROUND_HALF_UP))
