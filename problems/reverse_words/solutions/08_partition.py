line, words = input(), []
while True:
    word, space, line = line.partition(" ")
    words.insert(0, word)
    if not space:
        break
print(" ".join(words))
