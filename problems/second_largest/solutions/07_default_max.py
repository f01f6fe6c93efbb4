input()
values = [int(x) for x in input().split()]
top = max(values)
print(max((v for v in values if v < top), default="NONE"))
