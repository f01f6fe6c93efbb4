from itertools import accumulate

input()
prefix = [0, *accumulate(map(int, input().split()))]
lowest_before = list(accumulate(prefix[:-1], min))
print(max(p - low for p, low in zip(prefix[1:], lowest_before)))
