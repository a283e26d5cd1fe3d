variable "name_prefix" {
  description = "Queue name prefix; must equal SCHEDULER_SQS__QUEUE_PREFIX. Queues are <prefix>-inbound, <prefix>-outbound, <prefix>-results and a <name>-dlq for each."
  type        = string
  default     = "scheduler"

  validation {
    # 80 characters per queue name at most; "-outbound-dlq" is the longest suffix (13).
    condition     = can(regex("^[A-Za-z0-9_-]{1,67}$", var.name_prefix))
    error_message = "name_prefix must be 1-67 characters of letters, digits, '-' or '_'."
  }
}

variable "region" {
  description = "AWS region of the queues; must equal SCHEDULER_SQS__REGION."
  type        = string
  default     = "us-east-1"
}

variable "visibility_timeout_seconds" {
  description = "Default visibility timeout of every queue: how long a received message stays hidden before it is delivered again."
  type        = number
  default     = 30

  validation {
    condition     = var.visibility_timeout_seconds >= 0 && var.visibility_timeout_seconds <= 43200
    error_message = "visibility_timeout_seconds must be between 0 and 43200 (12 hours)."
  }
}

variable "message_retention_seconds" {
  description = "How long the work queues (inbound, outbound, results) keep a message. Default 4 days."
  type        = number
  default     = 345600

  validation {
    condition     = var.message_retention_seconds >= 60 && var.message_retention_seconds <= 1209600
    error_message = "message_retention_seconds must be between 60 and 1209600 (14 days)."
  }
}

variable "dlq_message_retention_seconds" {
  description = "How long the dead-letter queues keep a message. A standard queue keeps a message's original enqueue time when it is dead-lettered, so this should exceed message_retention_seconds. Default 14 days (the maximum)."
  type        = number
  default     = 1209600

  validation {
    condition     = var.dlq_message_retention_seconds >= 60 && var.dlq_message_retention_seconds <= 1209600
    error_message = "dlq_message_retention_seconds must be between 60 and 1209600 (14 days)."
  }
}

variable "max_receive_count" {
  description = "Receives after which SQS moves a message to the queue's dead-letter queue. The scheduler dead-letters malformed messages itself; this is the last resort, kept high so that receives during a database outage never redrive valid messages (see the README)."
  type        = number
  default     = 50

  validation {
    condition     = var.max_receive_count >= 1 && var.max_receive_count <= 1000
    error_message = "max_receive_count must be between 1 and 1000."
  }
}

variable "receive_wait_time_seconds" {
  description = "Default long-poll wait of ReceiveMessage on every queue (20 = the maximum, fewest empty receives)."
  type        = number
  default     = 20

  validation {
    condition     = var.receive_wait_time_seconds >= 0 && var.receive_wait_time_seconds <= 20
    error_message = "receive_wait_time_seconds must be between 0 and 20."
  }
}

variable "tags" {
  description = "Tags applied to every resource (through the provider's default_tags)."
  type        = map(string)
  default = {
    Application = "sqs-scheduler"
    ManagedBy   = "terraform"
  }
}
