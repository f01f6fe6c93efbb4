import re

print(" ".join(re.findall("[a-z]+", input())[::-1]))
