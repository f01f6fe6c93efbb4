opened = ""
for ch in input():
    if ch in "([{":
        opened += ch
    elif opened and opened[-1] + ch in "() [] {}".split():
        opened = opened[:-1]
    else:
        opened = "!"  # a mismatch can never be undone
        break
print("YES" if opened == "" else "NO")
