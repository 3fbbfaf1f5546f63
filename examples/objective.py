#!/usr/bin/env python3
"""An objective command for `dsnn-hpo optimize` (see configs/command-objective.toml).

dsnn-hpo writes one JSON line to stdin: {"config": {...}, "budget": 3, "trial_id": 4,
"continues": null}; the command prints a JSON object with one number per objective name.
This toy trades a loss that falls with x and the budget against an energy that rises with x.
"""
import json
import sys

trial = json.loads(sys.stdin.readline())
x = float(trial["config"]["x"])
y = float(trial["config"]["y"])
budget = float(trial["budget"])
loss = (1.0 - x) ** 2 + (y - 0.5) ** 2 + 1.0 / (1.0 + budget)
energy = x * budget / 9.0 + 0.01
print(json.dumps({"loss": loss, "energy": energy}))
