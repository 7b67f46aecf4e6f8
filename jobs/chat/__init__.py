"""The chat wing: guard, LangGraph agent, LLM providers, circuit breaker, the job."""
