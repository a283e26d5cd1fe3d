output "queue_urls" {
  description = "URLs of the work queues, by role (inbound, outbound, results)."
  value       = { for k, q in aws_sqs_queue.queue : k => q.url }
}

output "queue_arns" {
  description = "ARNs of the work queues, by role."
  value       = { for k, q in aws_sqs_queue.queue : k => q.arn }
}

output "dlq_urls" {
  description = "URLs of the dead-letter queues, by the role of their source queue."
  value       = { for k, q in aws_sqs_queue.dlq : k => q.url }
}

output "dlq_arns" {
  description = "ARNs of the dead-letter queues, by the role of their source queue."
  value       = { for k, q in aws_sqs_queue.dlq : k => q.arn }
}

output "policy_arn" {
  description = "ARN of the IAM policy granting access to the six queues."
  value       = aws_iam_policy.scheduler.arn
}

output "scheduler_env" {
  description = "Environment for sqs-scheduler processes using these queues (credentials come from the AWS default chain)."
  value = {
    SCHEDULER_TRANSPORT__KIND   = "sqs"
    SCHEDULER_SQS__REGION       = var.region
    SCHEDULER_SQS__QUEUE_PREFIX = var.name_prefix
  }
}
