"""Server-Sent Events machinery: the Redis subscriber hub, stream slots, the response."""
