# Deliberately wrong (a filter demonstration, see problems/README.md): starting the best sum at 0
# allows the empty block, so it prints 0 when every number is negative.
input()
best = current = 0
for v in map(int, input().split()):
    current = max(0, current + v)
    best = max(best, current)
print(best)
