import re

print(len(re.findall("[aeiou]", input())))
