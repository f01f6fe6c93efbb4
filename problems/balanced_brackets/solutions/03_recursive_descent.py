CLOSE = {"(": ")", "[": "]", "{": "}"}


def sequence(s, i):
    """Parse balanced groups from i on; the index where they end, or -1 on a mismatch."""
    while i < len(s) and s[i] in CLOSE:
        end = sequence(s, i + 1)
        if end == -1 or end >= len(s) or s[end] != CLOSE[s[i]]:
            return -1
        i = end + 1
    return i


s = input()
print("YES" if sequence(s, 0) == len(s) else "NO")
