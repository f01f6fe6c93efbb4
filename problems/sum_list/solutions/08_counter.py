from collections import Counter

input()
counts = Counter(int(x) for x in input().split())
print(sum(value * times for value, times in counts.items()))
