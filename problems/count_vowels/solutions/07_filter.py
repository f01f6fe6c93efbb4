VOWELS = set("aeiou")
print(len(list(filter(VOWELS.__contains__, input()))))
