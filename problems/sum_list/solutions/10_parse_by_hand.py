def parse(token):
    sign, digits = (-1, token[1:]) if token[0] == "-" else (1, token)
    value = 0
    for ch in digits:
        value = value * 10 + (ord(ch) - ord("0"))
    return sign * value


input()
answer = 0
for token in input().split():
    answer += parse(token)
print(answer)
