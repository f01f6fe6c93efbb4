table = [0] * 128
for ch in "aeiou":
    table[ord(ch)] = 1
total = 0
for code in input().encode():
    total += table[code]
print(total)
