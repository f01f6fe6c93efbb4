def encode(s):
    if not s:
        return ""
    rest = s.lstrip(s[0])
    return s[0] + str(len(s) - len(rest)) + encode(rest)


print(encode(input()))
