import math

n = int(input())
values = [int(x) for x in input().split()]
print(math.floor(sum(values) / n + 0.5))
