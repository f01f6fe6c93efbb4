input()
values = list(map(int, input().split()))
biggest = max(values)
rest = [v for v in values if v != biggest]
print(max(rest) if rest else "NONE")
