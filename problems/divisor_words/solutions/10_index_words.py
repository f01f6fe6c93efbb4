n, a, b = map(int, input().split())
names = ["", "Fizz", "Buzz", "FizzBuzz"]
for i in range(1, n + 1):
    kind = (i % a == 0) + 2 * (i % b == 0)
    print(names[kind] if kind else i)
