"""Hello-world under awslambdaric: the Python reference row of `make bench-peers`' cold starts,
as lambda-perf measures each runtime (a handler that returns a constant, nothing imported)."""


def handler(event, context):
    return {"statusCode": 200, "body": "hello world"}
