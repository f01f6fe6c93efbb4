import re

s = input()
while True:
    shorter = re.sub(r"\(\)|\[\]|\{\}", "", s)
    if shorter == s:
        break
    s = shorter
print("YES" if s == "" else "NO")
