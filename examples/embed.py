from engine import PolicyEngine

engine = PolicyEngine()  # the packaged default policy set, in-memory limits
decision = engine.evaluate({"id": "r1", "user": "alice", "prompt": "hi", "max_tokens": 200})
print(decision.allowed, decision.provider, decision.model)
print(decision.reason)
