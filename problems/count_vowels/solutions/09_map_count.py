line = input()
print(sum(map(line.count, "aeiou")))
