n, a, b = map(int, input().split())
WORDS = {(True, True): "FizzBuzz", (True, False): "Fizz", (False, True): "Buzz"}
for i in range(1, n + 1):
    print(WORDS.get((i % a == 0, i % b == 0), i))
