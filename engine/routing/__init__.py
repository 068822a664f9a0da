"""Routing: request validation, the evaluator, the decision, and the live metrics window
(in process, or shared through Redis)."""
