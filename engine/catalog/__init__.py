"""The model catalog: YAML validated with pydantic into frozen `Model`s, prices and cost
arithmetic (`engine.catalog.model`)."""
