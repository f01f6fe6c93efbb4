from functools import lru_cache

n = int(input())
a = tuple(map(int, input().split()))


@lru_cache(maxsize=None)
def starting_at(i):
    """Best sum of a block that starts at i."""
    if i == n - 1:
        return a[i]
    return a[i] + max(0, starting_at(i + 1))


print(max(starting_at(i) for i in range(n)))
