line = input()
cuts = [-1] + [i for i, ch in enumerate(line) if ch == " "] + [len(line)]
words = [line[cuts[k] + 1 : cuts[k + 1]] for k in range(len(cuts) - 1)]
print(" ".join(words[::-1]))
