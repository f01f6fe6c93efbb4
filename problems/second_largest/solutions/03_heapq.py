import heapq

input()
top = heapq.nlargest(2, set(map(int, input().split())))
print(top[1] if len(top) == 2 else "NONE")
