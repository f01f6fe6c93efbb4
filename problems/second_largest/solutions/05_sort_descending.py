input()
values = sorted(map(int, input().split()), reverse=True)
answer = "NONE"
for v in values:
    if v < values[0]:
        answer = v
        break
print(answer)
