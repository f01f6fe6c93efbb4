from itertools import accumulate

input()
*_, last = accumulate(map(int, input().split()))
print(last)
