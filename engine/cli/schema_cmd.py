"""`policyctl schema request|decision`: the JSON Schema of what goes in and comes out."""

from __future__ import annotations

import argparse
import json

from engine.cli.common import EXIT_OK
from engine.routing.decision_schema import DecisionSchema
from engine.routing.request import Request

EXAMPLE = """\
examples:
  policyctl schema request > request.schema.json
  policyctl schema decision
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "schema",
        help="print the JSON Schema of a request or a decision",
        description="Print the JSON Schema (draft 2020-12) of a request or a decision.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("which", choices=("request", "decision"))
    p.add_argument("--format", choices=("json",), default="json", help="always JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    model = Request if args.which == "request" else DecisionSchema
    schema = model.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    print(json.dumps(schema, indent=2))
    return EXIT_OK
