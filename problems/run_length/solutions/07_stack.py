runs = []
for ch in input():
    if runs and runs[-1][0] == ch:
        runs[-1][1] += 1
    else:
        runs.append([ch, 1])
print("".join(letter + str(count) for letter, count in runs))
