n, a, b = map(int, input().split())
until_a, until_b = a, b
for i in range(1, n + 1):
    until_a -= 1
    until_b -= 1
    word = ""
    if until_a == 0:
        word += "Fizz"
        until_a = a
    if until_b == 0:
        word += "Buzz"
        until_b = b
    print(word if word else i)
