count = 0
for ch in input():
    if ch == "a" or ch == "e" or ch == "i" or ch == "o" or ch == "u":
        count += 1
print(count)
