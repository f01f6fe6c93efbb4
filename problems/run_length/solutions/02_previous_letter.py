line = input()
out, current, count = [], line[0], 0
for ch in line:
    if ch == current:
        count += 1
    else:
        out.append(current + str(count))
        current, count = ch, 1
out.append(current + str(count))
print("".join(out))
