n, a, b = map(int, input().split())
print("\n".join(("Fizz" if i % a == 0 else "") + ("Buzz" if i % b == 0 else "") or str(i) for i in range(1, n + 1)))
