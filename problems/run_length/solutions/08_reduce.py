from functools import reduce


def step(runs, ch):
    if runs and runs[-1][0] == ch:
        return runs[:-1] + [(ch, runs[-1][1] + 1)]
    return runs + [(ch, 1)]


print("".join(f"{c}{n}" for c, n in reduce(step, input(), [])))
