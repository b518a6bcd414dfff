"""Start moto server as the local AWS emulator, with two fixes for how we use it.

1. EventBridge -> SQS delivery in moto re-parses the same JSONPath expressions for every
   delivered event (~120 ms each). Memoizing `jsonpath_ng.ext.parse` makes PutEvents cheap.
2. moto serves requests on threads, and a DynamoDB TransactWriteItems checks its conditions and
   applies its writes in separate steps. Under concurrent requests another thread can slip in
   between and two conditional writes both succeed, which real DynamoDB never allows. Serializing
   DynamoDB requests restores the atomicity our "no double booking" guarantee relies on.

Usage: python3 scripts/emulator.py [-H HOST] [-p PORT]   (same flags as `python3 -m moto.server`)
"""

import functools
import sys
import threading

try:
    import jsonpath_ng.ext
    from moto import server
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


if __name__ == "__main__":
    server.main(sys.argv[1:])
