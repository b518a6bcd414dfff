"""Start moto server as the local AWS emulator, with two fixes for how we use it.

1. EventBridge -> SQS delivery in moto re-parses the same JSONPath expressions for every
   delivered event (~120 ms each). Memoizing `jsonpath_ng.ext.parse` makes PutEvents cheap.
2. moto serves requests on threads, and a DynamoDB TransactWriteItems checks its conditions and
   applies its writes in separate steps. Under concurrent requests another thread can slip in
   between and two conditional writes both succeed, which real DynamoDB never allows. Serializing
   DynamoDB requests restores the atomicity our "no double booking" guarantee relies on.
3. moto's update-expression arithmetic (`ADD`, `SET a = a + :x`, `a - :x`) is not DynamoDB's:
   it renders a small sum in scientific notation ("1E-16") and then fails to parse it back on
   the next `ADD` (a ValueError that cancels the transaction), and it subtracts in floats.
   DynamoDB adds and subtracts numbers exactly, to 38 digits; so does this patch.

Usage: python3 scripts/emulator.py [-H HOST] [-p PORT]   (same flags as `python3 -m moto.server`)
"""

import functools
import sys
import threading

try:
    import decimal

    import jsonpath_ng.ext
    from moto import server
    from moto.dynamodb.models.dynamo_type import DynamoType
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication
except ImportError:
    sys.stderr.write("moto is not installed: pip install 'moto[server]'\n")
    sys.exit(3)

jsonpath_ng.ext.parse = functools.lru_cache(maxsize=1024)(jsonpath_ng.ext.parse)

_dynamodb_lock = threading.Lock()
_dispatch = DomainDispatcherApplication.__call__


def _serialized_dynamodb(self, environ, start_response):
    if environ.get("HTTP_X_AMZ_TARGET", "").startswith("DynamoDB_"):
        with _dynamodb_lock:
            # Consume the response inside the lock: the write happens while it is built.
            return list(_dispatch(self, environ, start_response))
    return _dispatch(self, environ, start_response)


DomainDispatcherApplication.__call__ = _serialized_dynamodb

_add, _sub = DynamoType.__add__, DynamoType.__sub__
_exact = decimal.Context(prec=38, traps=[decimal.Inexact, decimal.Overflow])


def _arithmetic(fallback, op):
    def apply(self, other):
        if self.type != "N" or other.type != "N":
            return fallback(self, other)
        result = op(_exact, decimal.Decimal(self.value), decimal.Decimal(other.value))
        return DynamoType({"N": format(result.normalize(_exact), "f")})

    return apply


DynamoType.__add__ = _arithmetic(_add, decimal.Context.add)
DynamoType.__sub__ = _arithmetic(_sub, decimal.Context.subtract)


if __name__ == "__main__":
    server.main(sys.argv[1:])
