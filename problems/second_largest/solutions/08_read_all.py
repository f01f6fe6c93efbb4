import sys

n, *values = map(int, sys.stdin.read().split())
distinct = list(dict.fromkeys(values[:n]))
distinct.sort()
print(distinct[-2] if len(distinct) > 1 else "NONE")
