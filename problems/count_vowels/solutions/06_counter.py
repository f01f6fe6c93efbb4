from collections import Counter

letters = Counter(input())
print(sum(letters[v] for v in "aeiou"))
