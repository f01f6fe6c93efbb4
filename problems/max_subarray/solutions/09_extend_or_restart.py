import sys

n, *a = map(int, sys.stdin.read().split())
answer, block = -(10**9), 0
for v in a[:n]:
    block = v if block < 0 else block + v
    if block > answer:
        answer = block
print(answer)
