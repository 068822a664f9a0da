"""`policyctl test`: tests beside policies (`NAME.tests.yaml`), run on fresh in-memory
state with a clock of their own, and the coverage they give: `spec` (the test file format,
read with positions), `run` (finding the files, running the tests, checking the
expectations), `coverage` (the traced Program and its items), `report` (text and JSON).
docs/testing.md describes the format and the command."""
