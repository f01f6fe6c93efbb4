n = int(input())
quotient, remainder = divmod(sum(int(x) for x in input().split()), n)
print(quotient + (2 * remainder >= n))
