n, a, b = map(int, input().split())
lines = [str(i) for i in range(n + 1)]
fizz = [False] * (n + 1)
for m in range(a, n + 1, a):
    lines[m], fizz[m] = "Fizz", True
for m in range(b, n + 1, b):
    lines[m] = "FizzBuzz" if fizz[m] else "Buzz"
print("\n".join(lines[1:]))
