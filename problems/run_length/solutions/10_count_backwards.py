s = input()
pieces, end = [], len(s)
for i in range(len(s) - 1, -1, -1):
    if i == 0 or s[i - 1] != s[i]:
        pieces.append(s[i] + str(end - i))
        end = i
print("".join(reversed(pieces)))
