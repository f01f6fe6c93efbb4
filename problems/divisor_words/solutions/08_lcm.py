import math

n, a, b = map(int, input().split())
both = a * b // math.gcd(a, b)
for i in range(1, n + 1):
    if i % both == 0:
        print("FizzBuzz")
    elif i % a == 0:
        print("Fizz")
    elif i % b == 0:
        print("Buzz")
    else:
        print(i)
