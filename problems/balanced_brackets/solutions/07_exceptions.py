def check(s):
    stack = []
    try:
        for ch in s:
            if ch in "([{":
                stack.append(ch)
            else:
                assert stack.pop() + ch in ("()", "[]", "{}")
    except (IndexError, AssertionError):
        return False
    return not stack


print("YES" if check(input()) else "NO")
