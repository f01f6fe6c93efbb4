def best(a, lo, hi):
    if hi - lo == 1:
        return a[lo]
    mid = (lo + hi) // 2
    left_tail = running = a[mid - 1]
    for i in range(mid - 2, lo - 1, -1):
        running += a[i]
        left_tail = max(left_tail, running)
    right_head = running = a[mid]
    for i in range(mid + 1, hi):
        running += a[i]
        right_head = max(right_head, running)
    return max(best(a, lo, mid), best(a, mid, hi), left_tail + right_head)


n = int(input())
print(best(list(map(int, input().split())), 0, n))
