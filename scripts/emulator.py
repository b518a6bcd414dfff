"""Start moto server as the local AWS emulator, with fixes for how we use it.

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
4. moto's SQS long poll busy-waits while a queue's only visible messages belong to a FIFO group
   that is in flight: its wait returns at once because "a message is visible", the loop finds it
   undeliverable and asks again, a full core under the interpreter lock for up to 20 s per poll,
   which starves every other request of the emulator. It also decides which groups are in flight
   once, when the poll starts, so a group released meanwhile stays blocked until the poll ends.
   Here a long poll is a series of immediate receives, each seeing the queue as it is, with a
   sleep between them that ends when a message is added or deleted (a delete releases its group)
   or, at the latest, after `_LONG_POLL_TICK` seconds (a visibility timeout that ran out is
   noticed within one tick).
   And moto breaks FIFO order when a group's in-flight messages become visible again (a failed
   batch retried): it notices them one by one in queue order, so the first is skipped (its
   group still looks in flight because of the second), the second is released and handed out
   first. Here every FIFO message whose visibility timeout ended is released before the receive
   looks at the queue, so the group's first message comes first. And moto lets a consumer change
   the visibility of a message that is no longer in flight (its timeout ran out, or another
   consumer received it since): the message turns invisible without being in flight, and the
   rest of its FIFO group overtakes it. SQS refuses that (`MessageNotInflight`); so does this.
5. moto's TransactWriteItems deep-copies every table it touches before it starts, to roll back
   on failure: each transaction costs time in proportion to everything stored, so the stack slows
   down as it is used (under a burst, most of the emulator's time went there). Here the
   transaction snapshots only the items it names and, when it is cancelled, puts those back.
6. moto answers every Query by sorting all the items of the table and then filtering them,
   the base table's items included when the query names one partition. Here a base-table query
   looks only at its partition, and an index query filters the items unsorted (moto sorts what
   matches afterwards in both cases, so results and pages are the same).
7. moto serializes each DynamoDB response by walking the service model attribute by attribute:
   most of a Query's time (≈ 2 ms per returned item). The item operations' results are already
   in the wire format (attribute values as `{"S": ...}` maps), so they are written with
   `json.dumps`, dropping `None` members as the model serializer does. A result holding anything
   JSON cannot write as is (binary attribute values, timestamps) still goes through moto's
   serializer.
8. Per request, moto lists its own package directory (a `listdir` and ~150 `isdir` calls, under
   a global lock) to find the service, and werkzeug logs a line to a colour-translating stderr.
   The directory listing is read once; request lines are not logged (errors still are).

9. moto's ReceiveMessage checks each message it hands out against the queue's retention period
   by computing every attribute of the queue three times (the approximate counts among them,
   each a pass over all its messages): a receive costs in proportion to the queue's depth, times
   the messages it returns, so a backlog slows its own draining. Here the check reads the
   retention period alone, and the list of deliverable messages a receive starts from is made
   with one reading of the clock instead of two per message.

10. moto's server (werkzeug's development server) closes every connection after its response
   and starts a thread per connection: every AWS call paid a TCP connection and a thread start,
   and a third of the emulator's time under a burst went to accepting connections, starting
   threads and parsing headers with the email package. Here moto's application is served by
   waitress, a production WSGI server: connections are kept alive as AWS endpoints keep them
   (idle ones for longer than the SDKs keep theirs), requests run on a fixed pool of threads
   sized for the long polls that hold one each.

Usage: python3 scripts/emulator.py [-H HOST] [-p PORT]   (as `python3 -m moto.server`)
"""

import argparse
import copy
import functools
import json
import logging
import os
import sys
import threading
import time

try:
    import decimal

    import jsonpath_ng.ext
    from moto import backends
    from moto.dynamodb.models import DynamoDBBackend
    from moto.dynamodb.models.table import Table
    from moto.dynamodb.responses import DynamoResult
    from moto.dynamodb.models.dynamo_type import DynamoType
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    import waitress
    from moto.sqs.exceptions import ReceiptHandleIsInvalid, SQSException
    from moto.sqs.models import Queue, SQSBackend
except ImportError:
    sys.stderr.write("moto or waitress is not installed: pip install 'moto[server]' waitress\n")
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

_LONG_POLL_TICK = 0.1
_receive = SQSBackend.receive_message
_delete = Queue.delete_message


def _long_poll(self, queue_name, count, wait_seconds_timeout, visibility_timeout,
               message_attribute_names=None):
    deadline = time.monotonic() + wait_seconds_timeout
    while True:
        queue = self.get_queue(queue_name)
        if queue.fifo_queue:
            for message in [m for m in queue.pending_messages if m.visible]:
                queue.pending_messages.discard(message)
        result = _receive(self, queue_name, count, 0, visibility_timeout, message_attribute_names)
        left = deadline - time.monotonic()
        if result or left <= 0:
            return result
        with queue._messages_lock:
            queue._messages_lock.wait(timeout=min(left, _LONG_POLL_TICK))


def _delete_and_wake(self, receipt_handle):
    _delete(self, receipt_handle)
    with self._messages_lock:
        self._messages_lock.notify_all()


SQSBackend.receive_message = _long_poll


class _MessageNotInflight(ReceiptHandleIsInvalid):
    # A ReceiptHandleIsInvalid to moto's batch call, which fails that entry alone.
    def __init__(self):
        SQSException.__init__(
            self,
            "AWS.SimpleQueueService.MessageNotInflight",
            "The message referred to isn't in flight.",
        )


_change_visibility = SQSBackend.change_message_visibility


def _change_visibility_in_flight(self, queue_name, receipt_handle, visibility_timeout):
    for message in self.get_queue(queue_name)._messages:
        if message.had_receipt_handle(receipt_handle):
            if message.visible or message.receipt_handle != receipt_handle:
                raise _MessageNotInflight()
            break
    return _change_visibility(self, queue_name, receipt_handle, visibility_timeout)


SQSBackend.change_message_visibility = _change_visibility_in_flight
Queue.delete_message = _delete_and_wake


def _retained(self, queue_name, message):
    queue = self.get_queue(queue_name)
    return int(queue.message_retention_period) + message.sent_timestamp / 1000 > time.time()


SQSBackend.is_message_valid_based_on_retention_period = _retained


def _deliverable(self):
    now = time.time() * 1000
    return [m for m in self._messages if now > m.visible_at and now >= m.delayed_until]


Queue.messages = property(_deliverable)

_transact = DynamoDBBackend.transact_write_items


def _item_key(backend, op):
    """The key of the item a transaction operation names, or None if moto will reject it."""
    table = backend.tables.get(op.get("TableName"))
    if table is None:
        return None
    if "Key" in op:
        return op["Key"]
    item = op.get("Item", {})
    names = [table.hash_key_attr] + ([table.range_key_attr] if table.range_key_attr else [])
    if not all(name in item for name in names):
        return None
    return {name: item[name] for name in names}


def _transact_with_item_undo(self, transact_items):
    undo = []
    for entry in transact_items:
        op = next(iter(entry.values()), {}) if isinstance(entry, dict) else {}
        key = _item_key(self, op) if isinstance(op, dict) else None
        if key is None:
            continue
        try:
            before = self.get_item(op["TableName"], key)
        except Exception:  # moto reports a bad key itself, inside the transaction
            continue
        undo.append((op["TableName"], key, before and copy.deepcopy(before.to_json()["Attributes"])))
    # moto's own snapshot becomes the live table (no copy): its rollback is then a no-op, and
    # the items are restored below instead.
    Table.__deepcopy__ = lambda table, memo: table
    try:
        return _transact(self, transact_items)
    except Exception:
        for table_name, key, before in reversed(undo):
            if before is None:
                if self.get_item(table_name, key) is not None:
                    self.delete_item(table_name, key)
            else:
                self.put_item(table_name, before)
        raise
    finally:
        del Table.__deepcopy__


DynamoDBBackend.transact_write_items = _transact_with_item_undo
_query = Table.query


def _query_candidates(self, hash_key, range_comparison, range_objs, limit, exclusive_start_key,
                      scan_index_forward, projection_expressions, index_name=None, *args,
                      **kwargs):
    if index_name:
        candidates = [
            item
            for entry in self.items.values()
            for item in (entry.values() if self.range_key_attr else [entry])
        ]
    else:
        entry = self.items.get(hash_key)
        if entry is None:
            candidates = []
        else:
            candidates = list(entry.values()) if self.range_key_attr else [entry]
    # Read by moto's query, once, in place of the whole sorted table.
    self.all_items = lambda: candidates
    try:
        return _query(self, hash_key, range_comparison, range_objs, limit, exclusive_start_key,
                      scan_index_forward, projection_expressions, index_name, *args, **kwargs)
    finally:
        del self.all_items


Table.query = _query_candidates

_ITEM_OPERATIONS = {
    "GetItem", "PutItem", "UpdateItem", "DeleteItem", "Query", "Scan",
    "BatchGetItem", "BatchWriteItem", "TransactGetItems", "TransactWriteItems",
}
_serialize = DynamoResult.execute_result


def _without_none(value):
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(type(value).__name__)


def _json_result(self, context):
    if context.operation_model.name in _ITEM_OPERATIONS and isinstance(self.result, dict):
        try:
            body = json.dumps(_without_none(self.result), separators=(",", ":"))
        except TypeError:
            return _serialize(self, context)
        return 200, {"Content-Type": "application/x-amz-json-1.0"}, body
    return _serialize(self, context)


DynamoResult.execute_result = _json_result

# Every long poll holds a thread for up to 20 s (one per polled queue and consumer), so the
# pool is sized for them and the requests beside them; idle connections are kept longer than
# the AWS SDKs keep theirs (90 s), so the client always closes first.
_THREADS = 128
_CONNECTIONS = 1000
_IDLE_SECONDS = 120

_moto_modules = tuple(backends.list_of_moto_modules())
backends.list_of_moto_modules = lambda: _moto_modules
logging.getLogger("werkzeug").setLevel(logging.WARNING)
logging.getLogger("waitress").setLevel(logging.WARNING)


def _serve(argv):
    parser = argparse.ArgumentParser(description="moto server with the fixes above, on waitress")
    parser.add_argument("-H", "--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("-p", "--port", type=int, default=5000, help="port to listen on")
    args = parser.parse_args(argv)
    os.environ.setdefault("MOTO_PORT", str(args.port))
    app = DomainDispatcherApplication(create_backend_app)
    waitress.serve(
        app,
        host=args.host,
        port=args.port,
        threads=_THREADS,
        connection_limit=_CONNECTIONS,
        channel_timeout=_IDLE_SECONDS,
        ident=None,
        _quiet=True,
    )


if __name__ == "__main__":
    _serve(sys.argv[1:])
