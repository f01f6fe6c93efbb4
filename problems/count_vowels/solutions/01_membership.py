print(sum(ch in "aeiou" for ch in input()))
