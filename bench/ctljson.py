#!/usr/bin/env python3
"""Runs a node command that prints one JSON object (`tunstack ctl ... msgbench --json`) and
prints it back as a bench/run.sh result: FIELD becomes `value` with UNIT, the rest rides along.

    ctljson.py [--value FIELD --unit UNIT] -- COMMAND...

With FIELD other than "value", the command's own value and unit are kept as `rate` and
`rate_unit`, and `latency_p99_us` is copied to `p99_us` (the DERIVED rows of report.py). A
command that fails, or prints no JSON object, fails with its output on stderr.
"""

import json
import subprocess
import sys


def main(argv):
    field, unit = "value", None
    try:
        sep = argv.index("--")
    except ValueError:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    opts, cmd = argv[:sep], argv[sep + 1 :]
    i = 0
    while i < len(opts):
        if opts[i] == "--value" and i + 1 < len(opts):
            field = opts[i + 1]
            i += 2
        elif opts[i] == "--unit" and i + 1 < len(opts):
            unit = opts[i + 1]
            i += 2
        else:
            print(f"ctljson: unknown option {opts[i]}", file=sys.stderr)
            return 2
    if not cmd:
        print("ctljson: no command", file=sys.stderr)
        return 2
    p = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if p.returncode != 0:
        sys.stderr.write(p.stdout + p.stderr)
        return 1
    obj = None
    for line in reversed(p.stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                obj = json.loads(line)
                break
            except ValueError:
                pass
    if not isinstance(obj, dict) or field not in obj:
        sys.stderr.write(f"ctljson: no JSON object with '{field}' in: {p.stdout}{p.stderr}")
        return 1
    if field != "value":
        obj["rate"], obj["rate_unit"] = obj.get("value"), obj.get("unit")
        obj["value"] = obj[field]
        if "latency_p99_us" in obj:
            obj["p99_us"] = obj["latency_p99_us"]
    if unit is not None:
        obj["unit"] = unit
    print(json.dumps(obj, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
