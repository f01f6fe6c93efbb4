MATCH = {")": "(", "]": "[", "}": "{"}
stack, ok = [], True
for ch in input():
    if ch in "([{":
        stack.append(ch)
    elif not stack or stack.pop() != MATCH[ch]:
        ok = False
        break
print("YES" if ok and not stack else "NO")
