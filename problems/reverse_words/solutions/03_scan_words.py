words, current = [], ""
for ch in input() + " ":
    if ch == " ":
        if current:
            words.append(current)
        current = ""
    else:
        current += ch
print(" ".join(words[::-1]))
