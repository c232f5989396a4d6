"""Executions: the history of every task run and job event, monitoring, the operations API."""
