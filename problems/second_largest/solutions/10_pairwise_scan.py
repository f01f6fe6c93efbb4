input()
values = list(map(int, input().split()))
answer = None
for v in values:
    if any(w > v for w in values) and all(w <= v for w in values if w < max(values)):
        answer = v
print("NONE" if answer is None else answer)
