CLOSE = {"(": ")", "[": "]", "{": "}"}


def balanced(s):
    """Split off the first group (up to where depth returns to 0) and check both parts."""
    if not s:
        return True
    if s[0] not in CLOSE:
        return False
    depth = 0
    for i, ch in enumerate(s):
        depth += 1 if ch in CLOSE else -1
        if depth == 0:
            return s[i] == CLOSE[s[0]] and balanced(s[1:i]) and balanced(s[i + 1 :])
    return False


print("YES" if balanced(input()) else "NO")
