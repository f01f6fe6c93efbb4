import re

words = re.split(r"\s+", input().strip())
words.reverse()
print(" ".join(words))
