input()
first = second = None
for v in map(int, input().split()):
    if first is None or v > first:
        first, second = v, first
    elif v < first and (second is None or v > second):
        second = v
print("NONE" if second is None else second)
