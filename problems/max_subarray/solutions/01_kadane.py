input()
values = list(map(int, input().split()))
best = current = values[0]
for v in values[1:]:
    current = max(v, current + v)
    best = max(best, current)
print(best)
