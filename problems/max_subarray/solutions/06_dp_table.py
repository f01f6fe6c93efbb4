n = int(input())
a = [int(x) for x in input().split()]
ending_here = [0] * n  # ending_here[i]: best sum of a block that ends at i
for i in range(n):
    ending_here[i] = a[i] + max(0, ending_here[i - 1]) if i else a[i]
print(max(ending_here))
