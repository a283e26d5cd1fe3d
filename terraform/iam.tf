# What an sqs-scheduler process needs on its queues, on these six queues only.
# Attach the policy to the role (or user) the processes run as.
# The batch calls (SendMessageBatch, DeleteMessageBatch,
# ChangeMessageVisibilityBatch) are authorised by the matching single actions.
# Queue encryption is SSE-SQS, so no KMS permission is needed.

data "aws_iam_policy_document" "scheduler" {
  statement {
    sid    = "SchedulerQueues"
    effect = "Allow"

    actions = [
      "sqs:SendMessage",
      "sqs:ReceiveMessage",
      "sqs:DeleteMessage",
      "sqs:ChangeMessageVisibility",
      "sqs:GetQueueAttributes",
      "sqs:GetQueueUrl",
    ]

    resources = concat(
      [for k in sort(tolist(local.queues)) : aws_sqs_queue.queue[k].arn],
      [for k in sort(tolist(local.queues)) : aws_sqs_queue.dlq[k].arn],
    )
  }
}

resource "aws_iam_policy" "scheduler" {
  name        = "${var.name_prefix}-sqs-access"
  description = "sqs-scheduler: send, receive, delete, change visibility and read attributes on its six SQS queues."
  policy      = data.aws_iam_policy_document.scheduler.json
}
