from collections import deque

pending = deque()
answer = "YES"
for ch in input():
    if ch in "([{":
        pending.append("([{".index(ch))
    elif not pending or pending.pop() != ")]}".index(ch):
        answer = "NO"
        break
if pending:
    answer = "NO"
print(answer)
