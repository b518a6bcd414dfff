"""The peer baseline of agents-api's `GET /agents/{agentId}/state`, written as a team would write
it in Python: boto3 and Powertools for AWS Lambda (Logger, Metrics, the HTTP API event handler).

Reads the agent profile item the agents worker writes (`pk = AGENT#<id>`, `sk = PROFILE`, a
consistent `GetItem`, as ours) and answers the same JSON as agents-api: the agent's fields in
the order agents-api serializes them, keys and `pendingCommand` left out, numbers as integers.
An id outside agents-api's charset is a `400`, an unknown agent a `404`. Like agents-api it logs
one JSON line per request and emits one EMF metrics line (Requests, ClientErrors, ServerErrors,
Latency). Run by awslambdaric (`python -m awslambdaric agent_state.handler`); TABLE_NAME names
the agents table, AWS_ENDPOINT_URL the emulator.
"""

import os
import re
import time

import boto3
from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver
from aws_lambda_powertools.event_handler.exceptions import BadRequestError, NotFoundError
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit

logger = Logger(service="agents-api")
metrics = Metrics(namespace="ServerlessCqrs", service="agents-api")
app = APIGatewayHttpResolver()
dynamodb = boto3.client("dynamodb")
TABLE = os.environ["TABLE_NAME"]
AGENT_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def agent_view(item):
    """The agent as agents-api's `GET /agents/{agentId}/state` shows it."""
    return {
        "agentId": item["agentId"]["S"],
        "name": item["name"]["S"],
        "state": item["state"]["S"],
        "skills": [s["S"] for s in item["skills"]["L"]],
        "capacity": int(item["capacity"]["N"]),
        "activeConversations": int(item["activeConversations"]["N"]),
        "version": int(item["version"]["N"]),
        "updatedAt": item["updatedAt"]["S"],
    }


@app.get("/agents/<agent_id>/state")
def get_state(agent_id: str):
    if not AGENT_ID.match(agent_id):
        raise BadRequestError("agentId may contain only A-Z, a-z, 0-9, '-' and '_' (1 to 64)")
    item = dynamodb.get_item(
        TableName=TABLE,
        Key={"pk": {"S": f"AGENT#{agent_id}"}, "sk": {"S": "PROFILE"}},
        ConsistentRead=True,
    ).get("Item")
    if item is None:
        raise NotFoundError(f"no agent {agent_id}")
    return agent_view(item)


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
@metrics.log_metrics
def handler(event, context):
    started = time.perf_counter()
    response = app.resolve(event, context)
    status = response["statusCode"]
    latency_ms = (time.perf_counter() - started) * 1e3
    logger.info("request served", extra={"status": status, "latency_ms": latency_ms})
    metrics.add_metric(name="Requests", unit=MetricUnit.Count, value=1)
    metrics.add_metric(name="ClientErrors", unit=MetricUnit.Count, value=int(400 <= status < 500))
    metrics.add_metric(name="ServerErrors", unit=MetricUnit.Count, value=int(status >= 500))
    metrics.add_metric(name="Latency", unit=MetricUnit.Milliseconds, value=latency_ms)
    return response
