import string

consonants_and_space = "".join(c for c in string.ascii_lowercase if c not in "aeiou") + " "
print(len(input().translate(str.maketrans("", "", consonants_and_space))))
