n, a, b = map(int, input().split())
for i in range(1, n + 1):
    match (i % a, i % b):
        case (0, 0):
            print("FizzBuzz")
        case (0, _):
            print("Fizz")
        case (_, 0):
            print("Buzz")
        case _:
            print(i)
