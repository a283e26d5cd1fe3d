# The three work queues of sqs-scheduler and their dead-letter queues:
#   <prefix>-inbound   submissions -> submitter
#   <prefix>-outbound  acquired tasks -> workers
#   <prefix>-results   worker results -> resulter
# each with <name>-dlq, which receives a message after var.max_receive_count
# receives.

locals {
  queues = toset(["inbound", "outbound", "results"])
}

resource "aws_sqs_queue" "dlq" {
  for_each = local.queues

  name                       = "${var.name_prefix}-${each.key}-dlq"
  visibility_timeout_seconds = var.visibility_timeout_seconds
  message_retention_seconds  = var.dlq_message_retention_seconds
  receive_wait_time_seconds  = var.receive_wait_time_seconds
  sqs_managed_sse_enabled    = true

  tags = {
    Name = "${var.name_prefix}-${each.key}-dlq"
  }
}

resource "aws_sqs_queue" "queue" {
  for_each = local.queues

  name                       = "${var.name_prefix}-${each.key}"
  visibility_timeout_seconds = var.visibility_timeout_seconds
  message_retention_seconds  = var.message_retention_seconds
  receive_wait_time_seconds  = var.receive_wait_time_seconds
  sqs_managed_sse_enabled    = true

  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.dlq[each.key].arn
    maxReceiveCount     = var.max_receive_count
  })

  tags = {
    Name = "${var.name_prefix}-${each.key}"
  }
}

# Each DLQ accepts dead letters from its own source queue only.
resource "aws_sqs_queue_redrive_allow_policy" "dlq" {
  for_each = local.queues

  queue_url = aws_sqs_queue.dlq[each.key].id

  redrive_allow_policy = jsonencode({
    redrivePermission = "byQueue"
    sourceQueueArns   = [aws_sqs_queue.queue[each.key].arn]
  })
}
