line = input()
print(line.count("a") + line.count("e") + line.count("i") + line.count("o") + line.count("u"))
