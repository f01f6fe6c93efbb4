expected = []
for ch in input():
    if ch == "(":
        expected.append(")")
    elif ch == "[":
        expected.append("]")
    elif ch == "{":
        expected.append("}")
    elif not expected or expected.pop() != ch:
        print("NO")
        break
else:
    print("NO" if expected else "YES")
