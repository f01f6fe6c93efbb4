def say(i, n, a, b):
    if i > n:
        return []
    word = ("Fizz" if i % a == 0 else "") + ("Buzz" if i % b == 0 else "")
    return [word or str(i)] + say(i + 1, n, a, b)


n, a, b = map(int, input().split())
print(*say(1, n, a, b), sep="\n")
