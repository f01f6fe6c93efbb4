def total(values, lo, hi):
    if hi - lo == 1:
        return values[lo]
    mid = (lo + hi) // 2
    return total(values, lo, mid) + total(values, mid, hi)


n = int(input())
values = [int(x) for x in input().split()]
print(total(values, 0, n))
