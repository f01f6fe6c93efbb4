input()
total, lowest, best = 0, 0, None
for v in map(int, input().split()):
    total += v
    best = total - lowest if best is None else max(best, total - lowest)
    lowest = min(lowest, total)
print(best)
