def top_two(values):
    """(largest, second largest distinct or None) of a non-empty list."""
    if len(values) == 1:
        return values[0], None
    best, second = top_two(values[1:])
    v = values[0]
    if v > best:
        return v, best
    if v < best and (second is None or v > second):
        return best, v
    return best, second


input()
second = top_two(list(map(int, input().split())))[1]
print("NONE" if second is None else second)
