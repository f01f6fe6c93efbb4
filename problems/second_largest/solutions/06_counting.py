input()
seen = [False] * 101
for v in map(int, input().split()):
    seen[v + 50] = True
present = [i - 50 for i in range(101) if seen[i]]
print(present[-2] if len(present) >= 2 else "NONE")
