import operator
from functools import reduce

input()
print(reduce(operator.add, (int(x) for x in input().split()), 0))
