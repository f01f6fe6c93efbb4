rest, out = input(), []
while " " in rest:
    rest, last = rest.rsplit(" ", 1)
    out.append(last)
out.append(rest)
print(" ".join(out))
