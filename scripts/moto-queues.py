#!/usr/bin/env python3
"""Create (or converge) the scheduler's SQS queues on a local moto server.

Usage: moto-queues.py ENDPOINT PREFIX

For each of inbound/outbound/results it makes PREFIX-NAME plus a dead-letter
queue PREFIX-NAME-dlq, and points the main queue's redrive policy at the DLQ.
Idempotent: queues are created by name only, then their attributes are set,
so re-running converges instead of failing with QueueAlreadyExists.
Prints one "NAME URL" line per queue on stdout.

Run it with the moto venv's python (boto3/botocore are moto dependencies).
"""
import json
import os
import sys

# botocore rather than boto3: same client, but skips importing s3transfer,
# which saves ~0.3 s and keeps a repeated `dev-services up` under 2 s.
import botocore.session

KINDS = ("inbound", "outbound", "results")
MAX_RECEIVE_COUNT = 50  # as src/transport/sqs.rs: the app dead-letters malformed messages itself
MAIN_ATTRS = {
    "VisibilityTimeout": "30",
    # Clients pass their own WaitTimeSeconds; the queue default stays 0.
    "ReceiveMessageWaitTimeSeconds": "0",
    "MessageRetentionPeriod": "345600",  # 4 days (the SQS default)
}
DLQ_ATTRS = {
    "VisibilityTimeout": "30",
    "ReceiveMessageWaitTimeSeconds": "0",
    "MessageRetentionPeriod": "1209600",  # 14 days (the SQS maximum)
}


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    endpoint, prefix = sys.argv[1], sys.argv[2]
    # Dummy credentials: moto accepts anything, but boto3 refuses to sign without some.
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")
    sqs = botocore.session.get_session().create_client(
        "sqs", endpoint_url=endpoint, region_name="us-east-1"
    )

    def ensure(name: str, attrs: dict) -> str:
        url = sqs.create_queue(QueueName=name)["QueueUrl"]
        sqs.set_queue_attributes(QueueUrl=url, Attributes=attrs)
        return url

    for kind in KINDS:
        main_name = f"{prefix}-{kind}"
        dlq_name = f"{main_name}-dlq"
        dlq_url = ensure(dlq_name, DLQ_ATTRS)
        dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        redrive = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": MAX_RECEIVE_COUNT})
        main_url = ensure(main_name, {**MAIN_ATTRS, "RedrivePolicy": redrive})
        print(f"{main_name} {main_url}")
        print(f"{dlq_name} {dlq_url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
