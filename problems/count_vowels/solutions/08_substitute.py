import re

print(len(re.sub("[^aeiou]", "", input())))
