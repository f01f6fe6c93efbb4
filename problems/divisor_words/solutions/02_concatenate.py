n, a, b = map(int, input().split())
for i in range(1, n + 1):
    print("Fizz" * (i % a == 0) + "Buzz" * (i % b == 0) or i)
