import re

print(" ".join(re.split(" ", input())[::-1]))
