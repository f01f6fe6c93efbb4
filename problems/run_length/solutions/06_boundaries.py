s = input()
starts = [0] + [i for i in range(1, len(s)) if s[i] != s[i - 1]] + [len(s)]
print("".join(s[a] + str(b - a) for a, b in zip(starts, starts[1:])))
