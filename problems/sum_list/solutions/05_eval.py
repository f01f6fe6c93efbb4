input()
print(eval("+".join(input().split())))
