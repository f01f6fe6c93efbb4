n = int(input())
a = list(map(int, input().split()))
prefix = [0]
for v in a:
    prefix.append(prefix[-1] + v)
print(max(prefix[j] - prefix[i] for i in range(n) for j in range(i + 1, n + 1)))
