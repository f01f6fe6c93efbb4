s = input()
level_bracket = {}  # depth -> the opening bracket currently open at that depth
depth, ok = 0, True
for ch in s:
    if ch in "([{":
        depth += 1
        level_bracket[depth] = ch
    else:
        if depth == 0 or level_bracket[depth] + ch not in ("()", "[]", "{}"):
            ok = False
            break
        depth -= 1
print("YES" if ok and depth == 0 else "NO")
