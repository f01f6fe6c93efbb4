stack = []
for word in input().split():
    stack.append(word)
out = []
while stack:
    out.append(stack.pop())
print(*out)
