"""The peer baseline of the agents worker, written as a team would write it in Python: boto3 and
Powertools for AWS Lambda (Logger, Metrics, and the batch utility's `SqsFifoPartialProcessor`
with `skip_group_on_error`, which reports partial batch failures and holds back only the rest
of a failed record's message group, as ours does on the agents FIFO command queue).

It applies `RegisterAgent` and `ChangeAgentState` (the commands of that queue) to the same
DynamoDB items as ours and gives the same guarantees, with the same AWS calls per message:

1. `GetItem` of the message's inbox entry (`pk = INBOX#<envelope id>`, `sk = INBOX`) and of the
   agent (`pk = AGENT#<id>`, `sk = PROFILE`), both consistent reads (ours makes the two
   concurrently; here one after the other, as boto3 code does);
2. an entry found: the message was applied before; its unpublished events are published again,
   nothing else happens;
3. otherwise one `TransactWriteItems`: the agent (`UpdateItem` conditioned on the version read,
   or on its absence) and the inbox entry (`Put`, conditioned on its absence) with the events it
   publishes (its outbox) and the command's outcome. A lost agent condition reads and decides
   again (at most 5 attempts); a lost inbox condition means another delivery applied it;
4. `PutEvents` of the outbox (`AgentRegistered` / `AgentStateChanged`, our envelope), then
   `UpdateItem` marking the entry published.

A command whose precondition (`expectedVersion`) no longer holds, or a state change for an agent
that does not exist, is rejected: only its inbox entry is written, with the reason. A record that
is not a JSON envelope of those two commands fails (Powertools reports it in
`batchItemFailures`). The idempotency utility (`idempotent_function` with
`DynamoDBPersistenceLayer`) is not used: its record would be written apart from the effect, so a
crash between the two would apply a command twice or never; the inbox entry written in the
effect's transaction is what makes ours exactly-once, so the peer does the same.

Run by awslambdaric (`python -m awslambdaric agents_worker.handler`); TABLE_NAME names the
agents table, EVENT_BUS_NAME the bus, AWS_ENDPOINT_URL the emulator.
"""

import json
import os
import random
import time
import uuid
from datetime import datetime, timezone

import boto3
from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import SqsFifoPartialProcessor, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from botocore.exceptions import ClientError

logger = Logger(service="agents-worker")
metrics = Metrics(namespace="ServerlessCqrs", service="agents-worker")
processor = SqsFifoPartialProcessor(skip_group_on_error=True)
dynamodb = boto3.client("dynamodb")
eventbridge = boto3.client("events")
TABLE = os.environ["TABLE_NAME"]
BUS = os.environ["EVENT_BUS_NAME"]
# Inbox entries outlive SQS retention (14 days) plus redrive time, as ours.
RETENTION_SECS = 30 * 24 * 3600
WRITE_ATTEMPTS = 5
STATES = ("AVAILABLE", "AWAY", "OFFLINE")


class Rejected(Exception):
    """The command is not applied; its outcome records why."""


def now():
    """The current time as RFC 3339 in UTC with 0, 3 or 6 fractional digits, as ours writes it."""
    t = datetime.now(timezone.utc)
    base = t.strftime("%Y-%m-%dT%H:%M:%S")
    if t.microsecond == 0:
        return base + "Z"
    if t.microsecond % 1000 == 0:
        return f"{base}.{t.microsecond // 1000:03d}Z"
    return f"{base}.{t.microsecond:06d}Z"


def dumps(value):
    return json.dumps(value, separators=(",", ":"))


def envelope_of(record: SQSRecord):
    """The envelope of a record: EventBridge's event whose detail it is, or the bare envelope."""
    body = json.loads(record.body)
    env = body["detail"] if isinstance(body, dict) and "detail" in body else body
    if not isinstance(env, dict) or not all(k in env for k in ("id", "correlationId", "type", "data")):
        raise ValueError("not an envelope")
    uuid.UUID(env["id"])
    return env


def get(pk, sk):
    return dynamodb.get_item(
        TableName=TABLE, Key={"pk": {"S": pk}, "sk": {"S": sk}}, ConsistentRead=True
    ).get("Item")


def inbox_key(message_id):
    return {"pk": {"S": f"INBOX#{message_id}"}, "sk": {"S": "INBOX"}}


def inbox_put(message_id, outbox, outcome):
    """The transaction item writing the inbox entry; it fails when the message was processed."""
    return {
        "Put": {
            "TableName": TABLE,
            "Item": {
                **inbox_key(message_id),
                "events": {"S": dumps(outbox)},
                "published": {"BOOL": not outbox},
                "expiresAt": {"N": str(int(time.time()) + RETENTION_SECS)},
                "outcome": {"S": dumps(outcome)},
            },
            "ConditionExpression": "attribute_not_exists(pk)",
        }
    }


def transact(items):
    """None when written, else the cancellation reason code of each item."""
    try:
        dynamodb.transact_write_items(TransactItems=items)
        return None
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") != "TransactionCanceledException":
            raise
        return [r.get("Code", "None") for r in e.response.get("CancellationReasons", [])]


def agent_update(current, agent):
    """The transaction item writing `agent`, conditioned on `current`'s version (or absence)."""
    update = {
        "TableName": TABLE,
        "Key": {"pk": {"S": f"AGENT#{agent['agentId']}"}, "sk": {"S": "PROFILE"}},
        "UpdateExpression": "SET agentId = :id, #name = :name, #skills = :skills, #capacity = :cap, "
        "#state = :state, #version = :v, updatedAt = :at, "
        "activeConversations = if_not_exists(activeConversations, :zero) REMOVE pendingCommand",
        "ExpressionAttributeNames": {
            "#name": "name",
            "#skills": "skills",
            "#capacity": "capacity",
            "#version": "version",
            "#state": "state",
        },
        "ExpressionAttributeValues": {
            ":id": {"S": agent["agentId"]},
            ":name": {"S": agent["name"]},
            ":skills": {"L": [{"S": s} for s in agent["skills"]]},
            ":cap": {"N": str(agent["capacity"])},
            ":state": {"S": agent["state"]},
            ":v": {"N": str(agent["version"])},
            ":at": {"S": agent["updatedAt"]},
            ":zero": {"N": "0"},
        },
    }
    if current is None:
        update["ConditionExpression"] = "attribute_not_exists(pk)"
    else:
        update["ConditionExpression"] = "#version = :oldv"
        update["ExpressionAttributeValues"][":oldv"] = current["version"]
    return {"Update": update}


def precondition(data, version):
    expected = data.get("expectedVersion")
    if expected is not None and expected != version:
        raise Rejected(f"the agent is at version {version}, not {expected}: another command was applied first")


def decide(kind, data, current):
    """The agent after the command and the event it publishes (None: nothing to publish)."""
    at = now()
    version = int(current["version"]["N"]) if current else 0
    if kind == "RegisterAgent":
        precondition(data, version)
        agent = {
            "agentId": data["agentId"],
            "name": data["name"],
            "state": current["state"]["S"] if current else "OFFLINE",
            "skills": list(data.get("skills", [])),
            "capacity": int(data["capacity"]),
            "version": version + 1,
            "updatedAt": at,
        }
        event = {
            "type": "AgentRegistered",
            "data": {k: agent[k] for k in ("agentId", "name", "skills", "capacity", "version")},
        }
        return agent, event
    if current is None:
        raise Rejected(f"no agent {data['agentId']}")
    precondition(data, version)
    if data["state"] not in STATES:
        raise ValueError(f"unknown state {data['state']}")
    previous = current["state"]["S"]
    agent = {
        "agentId": data["agentId"],
        "name": current["name"]["S"],
        "state": data["state"],
        "skills": [s["S"] for s in current["skills"]["L"]],
        "capacity": int(current["capacity"]["N"]),
        "version": version + 1,
        "updatedAt": at,
    }
    if data["state"] == previous:
        return agent, None
    event = {
        "type": "AgentStateChanged",
        "data": {
            "agentId": agent["agentId"],
            "state": agent["state"],
            "previousState": previous,
            "skills": agent["skills"],
            "capacity": agent["capacity"],
            "activeConversations": int(current["activeConversations"]["N"]),
            "version": agent["version"],
            "changedAt": at,
        },
    }
    return agent, event


def apply(env, current):
    """Writes the command's effect with its inbox entry: the events to publish, or None when
    another delivery of the message wrote its entry first."""
    data = env["data"]
    agent_id = data["agentId"]
    for attempt in range(WRITE_ATTEMPTS):
        if attempt:
            time.sleep(random.uniform(0.5, 1.0) * min(0.2, 0.02 * 2 ** (attempt - 1)))
            current = get(f"AGENT#{agent_id}", "PROFILE")
        try:
            agent, event = decide(env["type"], data, current)
        except Rejected as why:
            logger.info("command rejected", extra={"agent_id": agent_id, "reason": str(why)})
            outcome = {"aggregateId": agent_id, "status": "REJECTED", "reason": str(why)}
            codes = transact([inbox_put(env["id"], [], outcome)])
            return [] if codes is None else None
        outbox = []
        if event is not None:
            outbox.append({"id": str(uuid.uuid4()), "correlationId": env["correlationId"], "occurredAt": now(), **event})
        outcome = {"aggregateId": agent_id, "status": "APPLIED", "version": agent["version"]}
        codes = transact([agent_update(current, agent), inbox_put(env["id"], outbox, outcome)])
        if codes is None:
            return outbox
        if codes[1] == "ConditionalCheckFailed":
            return None
        logger.info("conditional write lost to a concurrent one; deciding again", extra={"retry": attempt})
    raise RuntimeError(f"the agent kept changing between read and write ({WRITE_ATTEMPTS} attempts)")


def publish(outbox):
    for i in range(0, len(outbox), 10):
        entries = [
            {"EventBusName": BUS, "Source": "cqrs.agents", "DetailType": e["type"], "Detail": dumps(e)}
            for e in outbox[i : i + 10]
        ]
        out = eventbridge.put_events(Entries=entries)
        if out.get("FailedEntryCount", 0):
            raise RuntimeError(f"PutEvents: {out['FailedEntryCount']} entries failed")


def record_handler(record: SQSRecord):
    env = envelope_of(record)
    if env["type"] not in ("RegisterAgent", "ChangeAgentState"):
        raise ValueError(f"the agents worker does not handle {env['type']}")
    logger.append_keys(message_id=record.message_id, message=env["type"], correlation_id=env["correlationId"])
    try:
        entry = get(f"INBOX#{env['id']}", "INBOX")
        current = get(f"AGENT#{env['data']['agentId']}", "PROFILE")
        if entry is not None:
            if entry.get("published", {}).get("BOOL"):
                return
            outbox = json.loads(entry["events"]["S"])
        else:
            outbox = apply(env, current)
            if outbox is None:
                entry = get(f"INBOX#{env['id']}", "INBOX")
                if entry is None or entry.get("published", {}).get("BOOL"):
                    return
                outbox = json.loads(entry["events"]["S"])
        if outbox:
            publish(outbox)
            try:
                dynamodb.update_item(
                    TableName=TABLE,
                    Key=inbox_key(env["id"]),
                    UpdateExpression="SET published = :t",
                    ExpressionAttributeValues={":t": {"BOOL": True}},
                )
            except ClientError as e:
                # Published already; a redelivery would publish again, which consumers deduplicate.
                logger.warning("could not mark events published", extra={"error": str(e)})
        logger.info("message processed")
    finally:
        logger.remove_keys(["message_id", "message", "correlation_id"])


@logger.inject_lambda_context
@metrics.log_metrics
def handler(event, context):
    started = time.perf_counter()
    response = process_partial_response(
        event=event, record_handler=record_handler, processor=processor, context=context
    )
    failed = len(response["batchItemFailures"])
    metrics.add_metric(name="MessagesProcessed", unit=MetricUnit.Count, value=len(event["Records"]) - failed)
    metrics.add_metric(name="MessagesFailed", unit=MetricUnit.Count, value=failed)
    metrics.add_metric(
        name="BatchDuration", unit=MetricUnit.Milliseconds, value=(time.perf_counter() - started) * 1e3
    )
    return response
