"""Who is calling and how often: JWT authentication, rate limits, the auth throttle."""
