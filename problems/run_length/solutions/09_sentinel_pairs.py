s = input()
out, count = [], 1
for here, after in zip(s, s[1:] + "#"):
    if here == after:
        count += 1
    else:
        out.append(f"{here}{count}")
        count = 1
print("".join(out))
